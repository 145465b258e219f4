//! Text <-> token ids, special tokens and the chat template.

use crate::{ModelError, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A tokenizer with the extras generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: PathBuf,
    /// Jinja chat template from the checkpoint, if it has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Prepend BOS when encoding a plain prompt (llama SPM models do; GPT-2 style BPE do not).
    pub add_bos: bool,
    pub bos_id: Option<u32>,
}

impl Tokenizer {
    /// Wrap an already-built tokenizer (used by the GGUF loader).
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        origin: &Path,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        add_bos: bool,
    ) -> Self {
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        Tokenizer {
            inner,
            origin: origin.to_path_buf(),
            chat_template,
            bos_token,
            eos_token,
            add_bos,
            bos_id,
        }
    }

    /// Load `tokenizer.json` (+ `tokenizer_config.json` when present) from a HF directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&cfg_path, format!("invalid JSON: {e}")))?
        } else {
            Value::Null
        };
        let token_str = |k: &str| -> Option<String> {
            match cfg.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => {
                    o.get("content").and_then(Value::as_str).map(String::from)
                }
                _ => None,
            }
        };
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from),
            _ => None,
        };
        // tokenizer.json's post-processor already adds BOS where the model wants it.
        let add_bos = false;
        Ok(Some(Tokenizer::from_parts(
            inner,
            &path,
            chat_template,
            token_str("bos_token"),
            token_str("eos_token"),
            add_bos,
        )))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encode text. `special` controls whether post-processing (e.g. a BOS
    /// token) is applied; a chat-templated prompt already contains its specials.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| ModelError::Tokenizer {
                path: self.origin.clone(),
                reason: format!("encoding failed: {e}"),
            })?;
        let mut ids = enc.get_ids().to_vec();
        if special && self.add_bos {
            if let Some(b) = self.bos_id {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Decode ids to text, skipping special tokens when asked.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer {
                path: self.origin.clone(),
                reason: format!("decoding failed: {e}"),
            })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Render the checkpoint's chat template for one user message, with the
    /// generation prompt appended.
    pub fn apply_chat_template(&self, user_message: &str) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::ChatTemplate(format!("{} has no chat template", self.origin.display()))
        })?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib_like::unknown_method);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| ModelError::ChatTemplate(format!("template does not parse: {e}")))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => vec![minijinja::context!{ role => "user", content => user_message }],
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        tmpl.render(ctx)
            .map_err(|e| ModelError::ChatTemplate(format!("rendering failed: {e}")))
    }
}

/// Python string methods that Hugging Face chat templates call (`.strip()`, ...).
mod minijinja_contrib_like {
    use minijinja::value::{Value, ValueKind};
    use minijinja::{Error, ErrorKind, State};

    pub fn unknown_method(
        _state: &State,
        value: &Value,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if value.kind() == ValueKind::String {
            let s = value.as_str().unwrap_or_default();
            let arg = args.first().and_then(|a| a.as_str());
            return match method {
                "strip" => Ok(Value::from(match arg {
                    Some(chars) => s.trim_matches(|c| chars.contains(c)),
                    None => s.trim(),
                })),
                "lstrip" => Ok(Value::from(s.trim_start())),
                "rstrip" => Ok(Value::from(s.trim_end())),
                "startswith" => Ok(Value::from(arg.is_some_and(|a| s.starts_with(a)))),
                "endswith" => Ok(Value::from(arg.is_some_and(|a| s.ends_with(a)))),
                "upper" => Ok(Value::from(s.to_uppercase())),
                "lower" => Ok(Value::from(s.to_lowercase())),
                _ => Err(Error::new(
                    ErrorKind::UnknownMethod,
                    format!("string has no method {method}"),
                )),
            };
        }
        if value.kind() == ValueKind::Map && method == "get" {
            let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
            let found = value.get_item(&key).unwrap_or(Value::UNDEFINED);
            return Ok(if found.is_undefined() {
                args.get(1).cloned().unwrap_or(Value::from(()))
            } else {
                found
            });
        }
        Err(Error::new(
            ErrorKind::UnknownMethod,
            format!("no method {method}"),
        ))
    }
}
