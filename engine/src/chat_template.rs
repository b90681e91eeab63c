//! A checkpoint's own chat template, rendered the way Hugging Face `transformers`
//! `apply_chat_template` renders it.
//!
//! The template comes from `chat_template.jinja` in the model directory, else from
//! `tokenizer_config.json` `chat_template` (a string, or a list of `{name, template}` of which
//! `default` is taken). It is rendered with [`minijinja`] set up like transformers' sandboxed
//! jinja2 environment: `trim_blocks`, `lstrip_blocks`, loop controls (`break` / `continue`),
//! python string and dict methods (`.strip()`, `.startswith()`, `.items()`, ... through
//! `minijinja-contrib`'s pycompat), `raise_exception(msg)`, and a `tojson` that writes what
//! python's `json.dumps(x, ensure_ascii=False)` writes (`", "` and `": "` separators, keys in
//! their order, optional `indent`). The special tokens of `tokenizer_config.json`
//! (`bos_token`, `eos_token`, `pad_token`, `unk_token`) are in the context as strings.
//!
//! ```no_run
//! use flashmoe_engine::chat_template::{ChatMessage, ChatTemplate, RenderOptions};
//! let t = ChatTemplate::from_dir("models/my-chat-model".as_ref())?;
//! let text = t.render(&[ChatMessage::new("user", "Hi!")], &RenderOptions::generation())?;
//! # Ok::<(), flashmoe_engine::chat_template::ChatTemplateError>(())
//! ```

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatTemplateError {
    /// The model directory has neither `chat_template.jinja` nor a `chat_template` in
    /// `tokenizer_config.json`.
    #[error(
        "{dir}: the model has no chat template (neither chat_template.jinja nor a `chat_template` in tokenizer_config.json); add one, or use plain completions"
    )]
    Missing {
        /// The model directory.
        dir: PathBuf,
    },
    /// A template file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `tokenizer_config.json` is not valid JSON, or its `chat_template` has the wrong shape.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The template does not compile.
    #[error("chat template from {path}: syntax error: {source}")]
    Syntax {
        /// Where the template came from.
        path: PathBuf,
        /// The template engine's error (with line).
        source: JinjaError,
    },
    /// The template refused the conversation (`raise_exception`) or failed while rendering.
    #[error("chat template from {path}: {source}")]
    Render {
        /// Where the template came from.
        path: PathBuf,
        /// The template engine's error; for `raise_exception`, its message.
        source: JinjaError,
    },
}

/// One message of a conversation: a role (`system`, `user`, `assistant`, `tool`) and its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// How to render: `add_generation_prompt` and extra template variables (`enable_thinking`, ...).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RenderOptions {
    /// Append the header of an assistant turn (what a model answers after).
    pub add_generation_prompt: bool,
    /// Extra variables passed to the template, as `apply_chat_template(**kwargs)` does.
    pub extra: Vec<(String, Value)>,
}

impl RenderOptions {
    /// `add_generation_prompt = true`, no extra variables.
    pub fn generation() -> Self {
        Self {
            add_generation_prompt: true,
            ..Self::default()
        }
    }

    /// Sets `add_generation_prompt`.
    pub fn add_generation_prompt(mut self, yes: bool) -> Self {
        self.add_generation_prompt = yes;
        self
    }

    /// Adds the template variable `name` (e.g. `enable_thinking`, `tools`). Map keys keep
    /// their order when `value` keeps it (a struct, or a [`Value`] parsed from JSON text).
    pub fn var(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        self.extra
            .push((name.into(), Value::from_serialize(&value)));
        self
    }
}

/// A compiled chat template with the checkpoint's special tokens.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source_path: PathBuf,
    special: serde_json::Map<String, serde_json::Value>,
}

/// File names looked for in a model directory.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// The tokenizer config holding `chat_template` and the special tokens.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

impl ChatTemplate {
    /// Loads the template of the model in `dir` (`chat_template.jinja`, else
    /// `tokenizer_config.json` `chat_template`) with its special tokens.
    pub fn from_dir(dir: &Path) -> Result<Self, ChatTemplateError> {
        let cfg_path = dir.join(TOKENIZER_CONFIG_FILE);
        let cfg =
            match std::fs::read_to_string(&cfg_path) {
                Ok(text) => Some(serde_json::from_str::<serde_json::Value>(&text).map_err(
                    |e| ChatTemplateError::Config {
                        path: cfg_path.clone(),
                        reason: format!("not valid JSON: {e}"),
                    },
                )?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(ChatTemplateError::Io {
                        path: cfg_path,
                        source,
                    });
                }
            };
        let jinja_path = dir.join(TEMPLATE_FILE);
        let (source, path) = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => (text, jinja_path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let from_cfg = match &cfg {
                    Some(c) => template_in_config(c, &cfg_path)?,
                    None => None,
                };
                match from_cfg {
                    Some(t) => (t, cfg_path.clone()),
                    None => {
                        return Err(ChatTemplateError::Missing {
                            dir: dir.to_path_buf(),
                        });
                    }
                }
            }
            Err(source) => {
                return Err(ChatTemplateError::Io {
                    path: jinja_path,
                    source,
                });
            }
        };
        let special = cfg.as_ref().map(special_tokens).unwrap_or_default();
        Self::new(source, path, special)
    }

    /// Compiles `source` (named `path` in errors) with these special tokens (`bos_token`, ...).
    pub fn new(
        source: String,
        path: PathBuf,
        special: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source)
            .map_err(|source| ChatTemplateError::Syntax {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            env,
            source_path: path,
            special,
        })
    }

    /// Where the template came from.
    pub fn source_path(&self) -> &Path {
        &self.source_path
    }

    /// The `eos_token` of `tokenizer_config.json`, if any (a stop string for chat).
    pub fn eos_token(&self) -> Option<&str> {
        self.special.get("eos_token").and_then(|v| v.as_str())
    }

    /// Renders `messages` as the prompt text.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let messages: Vec<Value> = messages.iter().map(Value::from_serialize).collect();
        self.render_values(&messages, opts)
    }

    /// Renders messages given as template values (extra fields such as `tool_calls` or
    /// `reasoning_content` are passed through). Parse JSON text straight into [`Value`]s
    /// (`serde_json::from_str::<Value>`) to keep its key order for `tojson`.
    pub fn render_values(
        &self,
        messages: &[Value],
        opts: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let mut ctx: BTreeMap<String, Value> = self
            .special
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect();
        for (k, v) in &opts.extra {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Value::from(messages.to_vec()));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(opts.add_generation_prompt),
        );
        let bad = |source| ChatTemplateError::Render {
            path: self.source_path.clone(),
            source,
        };
        let tmpl = self.env.get_template("chat").map_err(bad)?;
        tmpl.render(Value::from_serialize(&ctx)).map_err(bad)
    }
}

/// The `chat_template` of a tokenizer config: a string, or the `default` of a named list.
fn template_in_config(
    cfg: &serde_json::Value,
    path: &Path,
) -> Result<Option<String>, ChatTemplateError> {
    match cfg.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            for t in list {
                if t.get("name").and_then(|n| n.as_str()) == Some("default") {
                    return match t.get("template").and_then(|t| t.as_str()) {
                        Some(s) => Ok(Some(s.to_string())),
                        None => Err(ChatTemplateError::Config {
                            path: path.to_path_buf(),
                            reason: "`chat_template` entry `default` has no string `template`"
                                .into(),
                        }),
                    };
                }
            }
            Err(ChatTemplateError::Config {
                path: path.to_path_buf(),
                reason: "`chat_template` is a list without a `default` entry".into(),
            })
        }
        Some(other) => Err(ChatTemplateError::Config {
            path: path.to_path_buf(),
            reason: format!("`chat_template` must be a string or a list, not {other}"),
        }),
    }
}

/// `bos_token`, `eos_token`, `pad_token`, `unk_token` as strings (an `AddedToken` object's
/// `content`), as transformers puts them in the template context.
fn special_tokens(cfg: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for name in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        let text = match cfg.get(name) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        if let Some(t) = text {
            out.insert(name.into(), serde_json::Value::String(t));
        }
    }
    out
}

/// `raise_exception(msg)`: the template refuses the conversation with `msg`.
fn raise_exception(msg: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

/// `x | tojson(indent=N)`: python's `json.dumps(x, ensure_ascii=False, indent=N)`, map keys
/// in their order.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    // transformers' tojson also takes these; only their defaults are implemented.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Writes `v` as python's `json.dumps` does (non-ASCII kept, `", "` / `": "` separators, or
/// newlines and `indent` spaces per level with `","` / `": "`).
fn write_py_json(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), JinjaError> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match v.as_i64() {
            Some(i) if v.is_integer() => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&match serde_json::Number::from_f64(f) {
                    Some(n) => n.to_string(),
                    None if f.is_nan() => "NaN".into(),
                    None if f > 0.0 => "Infinity".into(),
                    None => "-Infinity".into(),
                });
            }
        },
        ValueKind::String => out.push_str(&quote(v.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => out.push_str(&quote(s)),
                    None => out.push_str(&quote(&k.to_string())),
                }
                out.push_str(": ");
                write_py_json(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&quote(&v.to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpl(src: &str) -> ChatTemplate {
        ChatTemplate::new(src.into(), "test.jinja".into(), Default::default()).unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = tmpl("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ [] | tojson }}");
        let x: Value =
            serde_json::from_str(r#"{"b": 1, "a": [true, null, "é\"\n", 1.5, 2.0], "c": {}}"#)
                .unwrap();
        let out = t
            .render_values(&[], &RenderOptions::default().var("x", x))
            .unwrap();
        assert_eq!(
            out,
            "{\"b\": 1, \"a\": [true, null, \"é\\\"\\n\", 1.5, 2.0], \"c\": {}}|{\n  \"b\": 1,\n  \"a\": [\n    true,\n    null,\n    \"é\\\"\\n\",\n    1.5,\n    2.0\n  ],\n  \"c\": {}\n}|[]"
        );
    }

    #[test]
    fn raise_exception_is_a_render_error_with_its_message() {
        let t = tmpl(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
        );
        let err = t
            .render(
                &[ChatMessage::new("assistant", "x")],
                &RenderOptions::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
        let ok = t
            .render(&[ChatMessage::new("user", "x")], &RenderOptions::default())
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn python_methods_and_loop_controls_work() {
        let t = tmpl(
            "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content.strip().upper() }}{% if m.content.startswith(' a') %}!{% endif %}\n{% endfor %}",
        );
        let msgs = [
            ChatMessage::new("user", " a b "),
            ChatMessage::new("user", "c"),
            ChatMessage::new("user", "never"),
        ];
        // As jinja2 with trim_blocks: the newline after `{% endif %}` goes.
        assert_eq!(t.render(&msgs, &RenderOptions::default()).unwrap(), "A B!C");
    }

    #[test]
    fn a_directory_without_a_template_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"eos_token": "</s>"}"#,
        )
        .unwrap();
        let err = ChatTemplate::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("no chat template"));
    }

    #[test]
    fn template_and_special_tokens_come_from_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"eos_token": {"content": "</s>"}, "bos_token": "<s>",
                "chat_template": [{"name": "tool_use", "template": "no"},
                                  {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap();
        assert_eq!(t.eos_token(), Some("</s>"));
        let out = t
            .render(&[ChatMessage::new("user", "hi")], &RenderOptions::default())
            .unwrap();
        assert_eq!(out, "<s>hi</s>");
        // chat_template.jinja wins over the config's template.
        std::fs::write(dir.path().join(TEMPLATE_FILE), "J{{ messages | length }}").unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "hi")], &RenderOptions::default())
            .unwrap();
        assert_eq!(out, "J1");
    }

    #[test]
    fn a_syntax_error_names_the_file() {
        let err =
            ChatTemplate::new("{% if %}".into(), "x.jinja".into(), Default::default()).unwrap_err();
        assert!(err.to_string().contains("x.jinja"), "{err}");
    }
}
