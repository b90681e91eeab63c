//! Every preset figure with its source, as a Markdown table (for notes and reviews; generated
//! from the preset files, so it cannot drift from them).

use std::fmt::Write as _;

use serde_json::Value;

use crate::device::{device_names, device_profile};
use crate::error::Result;
use crate::geometry::model_presets;

fn walk(prefix: &str, v: &Value, rows: &mut Vec<(String, String, String)>) {
    let Some(o) = v.as_object() else { return };
    if let (Some(val), Some(src)) = (o.get("value"), o.get("source").and_then(Value::as_str)) {
        rows.push((prefix.to_string(), val.to_string(), src.to_string()));
        return;
    }
    for (k, x) in o {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        walk(&p, x, rows);
    }
}

/// A Markdown table of every device and model preset figure: preset, field, value, source.
pub fn figures_markdown() -> Result<String> {
    let mut rows = Vec::new();
    for name in device_names() {
        let v = serde_json::to_value(device_profile(name)?).unwrap_or(Value::Null);
        let mut r = Vec::new();
        walk("", &v, &mut r);
        rows.extend(r.into_iter().map(|(f, v, s)| (name.to_string(), f, v, s)));
    }
    for m in model_presets()? {
        let name = m.name.clone();
        let v = serde_json::json!({
            "layers": m.layers, "experts": m.experts, "k_native": m.k_native, "hidden": m.hidden,
            "moe_intermediate": m.moe_intermediate, "total_params": m.total_params,
            "non_expert_bytes_4bit": m.non_expert_bytes_4bit,
        });
        let mut r = Vec::new();
        walk("", &v, &mut r);
        rows.extend(r.into_iter().map(|(f, v, s)| (name.clone(), f, v, s)));
        if let Ok(g) = m.at_bits(4) {
            let src = "derived: 3 x hidden x moe_intermediate params at 4 bits + f16 scale and bias per 64";
            rows.push((
                name.clone(),
                "expert_bytes@4bit".into(),
                g.expert_bytes.to_string(),
                src.into(),
            ));
        }
    }
    let mut s = String::from("| preset | figure | value | source |\n|---|---|---|---|\n");
    for (p, f, v, src) in rows {
        let _ = writeln!(s, "| {p} | {f} | {v} | {} |", src.replace('|', "/"));
    }
    Ok(s)
}
