//! Turning a KServe v2 / Triton `ModelInferRequest` into a generation
//! request, following the convention of Triton's vLLM backend: inputs
//! `text_input` (BYTES), `stream` (BOOL), `sampling_parameters` (BYTES, a
//! JSON object) and `exclude_input_in_output` (BOOL); sampling values may
//! also come as request parameters. Every problem is an INVALID_ARGUMENT
//! that names the input or parameter.

use serde_json::Value;
use std::collections::HashMap;
use tessera_proto::inference::infer_parameter::ParameterChoice;
use tessera_proto::inference::model_infer_request::InferInputTensor;
use tessera_proto::inference::{InferParameter, ModelInferRequest};
use tonic::Status;

/// What a request asks for, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub prompt: String,
    pub stream: bool,
    pub exclude_input: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub max_tokens: Option<usize>,
    pub seed: u64,
    pub stop: Vec<String>,
    pub repetition_penalty: f32,
    pub ignore_eos: bool,
}

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// The elements of a BYTES tensor: from `contents.bytes_contents`, or from
/// its raw contents (each element a 4-byte little-endian length, then bytes).
fn bytes_elements(t: &InferInputTensor, raw: Option<&Vec<u8>>) -> Result<Vec<Vec<u8>>, Status> {
    if t.datatype != "BYTES" {
        return Err(bad(format!(
            "input `{}` has datatype {}, expected BYTES",
            t.name, t.datatype
        )));
    }
    if let Some(raw) = raw {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < raw.len() {
            let Some(len) = raw.get(at..at + 4) else {
                return Err(bad(format!(
                    "input `{}`: truncated BYTES element length",
                    t.name
                )));
            };
            let n = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            at += 4;
            let Some(b) = raw.get(at..at + n) else {
                return Err(bad(format!(
                    "input `{}`: BYTES element of {n} bytes runs past the end of the raw contents",
                    t.name
                )));
            };
            out.push(b.to_vec());
            at += n;
        }
        return Ok(out);
    }
    Ok(t.contents
        .as_ref()
        .map(|c| c.bytes_contents.clone())
        .unwrap_or_default())
}

fn bool_element(t: &InferInputTensor, raw: Option<&Vec<u8>>) -> Result<bool, Status> {
    if t.datatype != "BOOL" {
        return Err(bad(format!(
            "input `{}` has datatype {}, expected BOOL",
            t.name, t.datatype
        )));
    }
    let v = match raw {
        Some(r) => r.first().map(|&b| b != 0),
        None => t
            .contents
            .as_ref()
            .and_then(|c| c.bool_contents.first().copied()),
    };
    v.ok_or_else(|| bad(format!("input `{}` has no value", t.name)))
}

fn one_string(t: &InferInputTensor, raw: Option<&Vec<u8>>) -> Result<String, Status> {
    let els = bytes_elements(t, raw)?;
    if els.len() != 1 {
        return Err(bad(format!(
            "input `{}` must hold exactly one element (batch size 1), got {}",
            t.name,
            els.len()
        )));
    }
    String::from_utf8(els.into_iter().next().unwrap_or_default())
        .map_err(|_| bad(format!("input `{}` is not valid UTF-8", t.name)))
}

/// A sampling value from JSON or from an `InferParameter`, as f64/i64/string.
enum Val {
    Num(f64),
    Str(String),
    Bool(bool),
    List(Vec<String>),
}

fn from_json(key: &str, v: &Value) -> Result<Val, Status> {
    Ok(match v {
        Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Val::Str(s.clone()),
        Value::Bool(b) => Val::Bool(*b),
        Value::Array(a) => Val::List(
            a.iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        bad(format!(
                            "sampling parameter `{key}`: list items must be strings"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Value::Null => return Err(bad(format!("sampling parameter `{key}` is null"))),
        Value::Object(_) => return Err(bad(format!("sampling parameter `{key}` is an object"))),
    })
}

fn from_param(p: &InferParameter) -> Option<Val> {
    Some(match p.parameter_choice.as_ref()? {
        ParameterChoice::BoolParam(b) => Val::Bool(*b),
        ParameterChoice::Int64Param(i) => Val::Num(*i as f64),
        ParameterChoice::Uint64Param(u) => Val::Num(*u as f64),
        ParameterChoice::DoubleParam(d) => Val::Num(*d),
        ParameterChoice::StringParam(s) => Val::Str(s.clone()),
    })
}

fn num(key: &str, v: &Val) -> Result<f64, Status> {
    match v {
        Val::Num(n) if n.is_finite() => Ok(*n),
        // vLLM clients often send numbers as strings in the JSON.
        Val::Str(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .ok_or_else(|| bad(format!("sampling parameter `{key}`: `{s}` is not a number"))),
        _ => Err(bad(format!("sampling parameter `{key}` must be a number"))),
    }
}

fn non_negative_int(key: &str, v: &Val) -> Result<u64, Status> {
    let n = num(key, v)?;
    if n < 0.0 || n.fract() != 0.0 {
        return Err(bad(format!(
            "sampling parameter `{key}` must be a non-negative integer, got {n}"
        )));
    }
    Ok(n as u64)
}

fn boolean(key: &str, v: &Val) -> Result<bool, Status> {
    match v {
        Val::Bool(b) => Ok(*b),
        Val::Str(s) if s == "true" || s == "false" => Ok(s == "true"),
        _ => Err(bad(format!(
            "sampling parameter `{key}` must be true or false"
        ))),
    }
}

impl Parsed {
    fn apply(&mut self, key: &str, v: &Val) -> Result<(), Status> {
        match key {
            "temperature" => self.temperature = num(key, v)? as f32,
            "top_p" => self.top_p = num(key, v)? as f32,
            "top_k" => {
                // vLLM uses -1 for "no top-k".
                let n = num(key, v)?;
                self.top_k = if n == -1.0 {
                    0
                } else {
                    non_negative_int(key, v)? as usize
                };
            }
            "max_tokens" => self.max_tokens = Some(non_negative_int(key, v)? as usize),
            "seed" => self.seed = non_negative_int(key, v)?,
            "repetition_penalty" => self.repetition_penalty = num(key, v)? as f32,
            "ignore_eos" => self.ignore_eos = boolean(key, v)?,
            "stop" => {
                self.stop = match v {
                    Val::Str(s) => vec![s.clone()],
                    Val::List(l) => l.clone(),
                    _ => {
                        return Err(bad(
                            "sampling parameter `stop` must be a string or a list of strings",
                        ))
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Request parameters that are Triton's own, not sampling values.
const TRITON_PARAMS: &[&str] = &[
    "triton_enable_empty_final_response",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
];

/// Parse a request; `known` lists the sampling keys accepted.
pub fn parse(req: &ModelInferRequest) -> Result<Parsed, Status> {
    let mut p = Parsed {
        prompt: String::new(),
        stream: false,
        exclude_input: false,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_tokens: None,
        seed: 0,
        stop: Vec::new(),
        repetition_penalty: 1.0,
        ignore_eos: false,
    };
    let raw = &req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(bad(format!(
            "{} raw input contents for {} inputs",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut prompt = None;
    let mut seen = HashMap::new();
    for (i, t) in req.inputs.iter().enumerate() {
        if seen.insert(t.name.as_str(), ()).is_some() {
            return Err(bad(format!("input `{}` is given twice", t.name)));
        }
        let r = raw.get(i);
        match t.name.as_str() {
            "text_input" => prompt = Some(one_string(t, r)?),
            "stream" => p.stream = bool_element(t, r)?,
            "exclude_input_in_output" => p.exclude_input = bool_element(t, r)?,
            "sampling_parameters" => {
                let s = one_string(t, r)?;
                let v: Value = serde_json::from_str(&s).map_err(|e| {
                    bad(format!("input `sampling_parameters` is not valid JSON: {e}"))
                })?;
                let Value::Object(map) = v else {
                    return Err(bad("input `sampling_parameters` must be a JSON object"));
                };
                for (k, v) in &map {
                    p.apply(k, &from_json(k, v)?)?;
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown input `{other}`: expected text_input, stream, sampling_parameters, exclude_input_in_output"
                )))
            }
        }
    }
    // Parameters given as InferParameters (after the JSON, so they win).
    let mut keys: Vec<_> = req.parameters.keys().collect();
    keys.sort();
    for k in keys {
        if TRITON_PARAMS.contains(&k.as_str()) {
            continue;
        }
        if let Some(v) = req.parameters.get(k).and_then(from_param) {
            p.apply(k, &v)?;
        }
    }
    p.prompt = prompt.ok_or_else(|| bad("missing input `text_input` (BYTES, the prompt)"))?;
    if p.prompt.is_empty() {
        return Err(bad("input `text_input` is empty"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::inference::InferTensorContents;

    fn tensor(name: &str, dt: &str) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape: vec![1],
            parameters: HashMap::new(),
            contents: None,
        }
    }

    fn raw_bytes(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn raw_inputs_json_and_parameters() {
        let mut req = ModelInferRequest {
            inputs: vec![
                tensor("text_input", "BYTES"),
                tensor("stream", "BOOL"),
                tensor("sampling_parameters", "BYTES"),
            ],
            raw_input_contents: vec![
                raw_bytes("Hi"),
                vec![1],
                raw_bytes(r#"{"temperature": 0.5, "max_tokens": "7", "stop": ["x"], "top_k": -1}"#),
            ],
            ..Default::default()
        };
        req.parameters.insert(
            "seed".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(9)),
            },
        );
        let p = parse(&req).unwrap();
        assert_eq!(
            (
                p.prompt.as_str(),
                p.stream,
                p.temperature,
                p.max_tokens,
                p.seed,
                p.top_k
            ),
            ("Hi", true, 0.5, Some(7), 9, 0)
        );
        assert_eq!(p.stop, vec!["x".to_string()]);
    }

    #[test]
    fn typed_contents_work_too() {
        let mut t = tensor("text_input", "BYTES");
        t.contents = Some(InferTensorContents {
            bytes_contents: vec![b"Yo".to_vec()],
            ..Default::default()
        });
        let req = ModelInferRequest {
            inputs: vec![t],
            ..Default::default()
        };
        assert_eq!(parse(&req).unwrap().prompt, "Yo");
    }

    #[test]
    fn problems_name_the_input() {
        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (ModelInferRequest::default(), "missing input `text_input`"),
            (
                ModelInferRequest {
                    inputs: vec![tensor("text_input", "INT32")],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                },
                "expected BYTES",
            ),
            (
                ModelInferRequest {
                    inputs: vec![tensor("text_input", "BYTES")],
                    raw_input_contents: vec![vec![9, 0, 0, 0, b'a']],
                    ..Default::default()
                },
                "runs past the end",
            ),
            (
                ModelInferRequest {
                    inputs: vec![
                        tensor("text_input", "BYTES"),
                        tensor("sampling_parameters", "BYTES"),
                    ],
                    raw_input_contents: vec![raw_bytes("a"), raw_bytes("{nope")],
                    ..Default::default()
                },
                "not valid JSON",
            ),
            (
                ModelInferRequest {
                    inputs: vec![
                        tensor("text_input", "BYTES"),
                        tensor("sampling_parameters", "BYTES"),
                    ],
                    raw_input_contents: vec![raw_bytes("a"), raw_bytes(r#"{"max_tokens": -3}"#)],
                    ..Default::default()
                },
                "non-negative integer",
            ),
            (
                ModelInferRequest {
                    inputs: vec![tensor("text_input", "BYTES")],
                    raw_input_contents: vec![raw_bytes("")],
                    ..Default::default()
                },
                "is empty",
            ),
            (
                ModelInferRequest {
                    inputs: vec![tensor("prompt", "BYTES")],
                    raw_input_contents: vec![raw_bytes("a")],
                    ..Default::default()
                },
                "unknown input `prompt`",
            ),
        ];
        for (req, want) in cases {
            let e = parse(&req).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().contains(want),
                "{} does not contain {want}",
                e.message()
            );
        }
    }
}
