//! The real Qwen3, Qwen3.5 and Mistral (mistralai) chat templates rendered by
//! [`ChatTemplate`] byte for byte as Hugging Face `transformers` renders them
//! (`tests/data/chat_templates/golden.json`, written by `make_golden.py` there).

use flashmoe_engine::chat_template::{ChatTemplate, RenderOptions};
use minijinja::Value;
use std::path::{Path, PathBuf};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_templates")
}

fn load(name: &str, special: &serde_json::Value) -> ChatTemplate {
    let path = data().join(name);
    let src = std::fs::read_to_string(&path).unwrap();
    let special = special.as_object().cloned().unwrap_or_default();
    ChatTemplate::new(src, path, special).unwrap()
}

/// golden.json twice: as JSON for the fields, and as template values whose maps keep the
/// file's key order (what `tojson` must reproduce).
fn golden() -> (serde_json::Value, Value) {
    let text = std::fs::read_to_string(data().join("golden.json")).unwrap();
    (
        serde_json::from_str(&text).unwrap(),
        serde_json::from_str(&text).unwrap(),
    )
}

fn item(v: &Value, path: &[&str], index: Option<usize>) -> Value {
    let mut v = v.clone();
    for (i, p) in path.iter().enumerate() {
        v = v.get_attr(p).unwrap();
        if i == 1
            && let Some(n) = index
        {
            v = v.get_item(&Value::from(n)).unwrap();
        }
    }
    v
}

fn list(v: &Value) -> Vec<Value> {
    v.try_iter().unwrap().collect()
}

#[test]
fn real_templates_render_like_transformers() {
    let (g, gv) = golden();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "golden.json has {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let cv = gv
            .get_attr("cases")
            .unwrap()
            .get_item(&Value::from(i))
            .unwrap();
        let t = load(c["template"].as_str().unwrap(), &c["special_tokens"]);
        let mut opts =
            RenderOptions::default().add_generation_prompt(c["add_generation_prompt"] == true);
        let extra = cv.get_attr("extra").unwrap();
        for k in list(&extra) {
            let name = k.as_str().unwrap().to_string();
            opts = opts.var(name, extra.get_item(&k).unwrap());
        }
        let messages = list(&cv.get_attr("messages").unwrap());
        let got = t.render_values(&messages, &opts).unwrap();
        let want = c["expected"].as_str().unwrap();
        if got != want {
            failures.push(format!(
                "{} / {} (gen {}, extra {}):\n--- want\n{want:?}\n--- got\n{got:?}",
                c["template"], c["conversation"], c["add_generation_prompt"], c["extra"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn mistral_template_refuses_non_alternating_roles_with_its_message() {
    let (g, gv) = golden();
    let r = &g["refused"];
    let t = load(r["template"].as_str().unwrap(), &r["special_tokens"]);
    let messages = list(&item(&gv, &["refused", "messages"], None));
    let err = t
        .render_values(&messages, &RenderOptions::generation())
        .unwrap_err();
    let want = r["error"].as_str().unwrap();
    assert!(
        err.to_string().contains(want),
        "{err} does not contain {want}"
    );
}
