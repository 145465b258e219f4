//! The `inference.GRPCInferenceService` implementation: validation,
//! submission to the scheduler, and responses (unary and streaming).

use super::request::{parse, Parsed};
use super::scheduler::{Event, GenRequest, Stats};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tessera_engine::SamplingParams;
use tessera_model::Tokenizer;
use tessera_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tessera_proto::inference::infer_parameter::ParameterChoice;
use tessera_proto::inference::model_infer_response::InferOutputTensor;
use tessera_proto::inference::model_metadata_response::TensorMetadata;
use tessera_proto::inference::*;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Limits and identity the service checks requests against.
pub struct ApiConfig {
    pub model_name: String,
    pub max_context: usize,
    pub max_tokens: usize,
    pub eos_ids: Vec<u32>,
}

pub struct InferenceApi {
    pub cfg: ApiConfig,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub queue: mpsc::Sender<GenRequest>,
    /// True once the workers are loaded and while they are healthy.
    pub ready: Arc<AtomicBool>,
    pub stats: Arc<Mutex<Stats>>,
}

const VERSION: &str = "1";

fn meta(name: &str, datatype: &str) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![1],
    }
}

fn bool_param(b: bool) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::BoolParam(b)),
    }
}

/// One BYTES element in raw form: 4-byte little-endian length, then the bytes.
fn raw_bytes(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A response holding `text` and, on the last one, the finish reason and counts.
fn response(
    model: &str,
    id: &str,
    text: &str,
    end: Option<(&str, usize, usize)>,
    final_flag: Option<bool>,
) -> ModelInferResponse {
    let mut outputs = vec![InferOutputTensor {
        name: "text_output".into(),
        datatype: "BYTES".into(),
        shape: vec![1],
        ..Default::default()
    }];
    let mut raw = vec![raw_bytes(text)];
    if let Some((finish, nin, nout)) = end {
        for (name, dt, bytes) in [
            ("finish_reason", "BYTES", raw_bytes(finish)),
            (
                "num_input_tokens",
                "UINT32",
                (nin as u32).to_le_bytes().to_vec(),
            ),
            (
                "num_output_tokens",
                "UINT32",
                (nout as u32).to_le_bytes().to_vec(),
            ),
        ] {
            outputs.push(InferOutputTensor {
                name: name.into(),
                datatype: dt.into(),
                shape: vec![1],
                ..Default::default()
            });
            raw.push(bytes);
        }
    }
    let mut parameters = std::collections::HashMap::new();
    if let Some(f) = final_flag {
        parameters.insert("triton_final_response".to_string(), bool_param(f));
    }
    ModelInferResponse {
        model_name: model.into(),
        model_version: VERSION.into(),
        id: id.into(),
        parameters,
        outputs,
        raw_output_contents: raw,
    }
}

impl InferenceApi {
    fn check_model(&self, name: &str, version: &str) -> Result<(), Status> {
        if name != self.cfg.model_name {
            return Err(Status::invalid_argument(format!(
                "unknown model `{name}`; this server serves `{}`",
                self.cfg.model_name
            )));
        }
        if !version.is_empty() && version != VERSION {
            return Err(Status::invalid_argument(format!(
                "model `{name}` has no version `{version}` (only {VERSION})"
            )));
        }
        Ok(())
    }

    /// Validate, tokenize and queue one request; returns its event stream.
    async fn submit(
        &self,
        req: &ModelInferRequest,
    ) -> Result<(Parsed, usize, mpsc::UnboundedReceiver<Event>), Status> {
        self.check_model(&req.model_name, &req.model_version)?;
        let p = parse(req)?;
        if !self.ready.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "the model is not ready (loading, restarting or draining)",
            ));
        }
        let ctx = self.cfg.max_context;
        // A cheap bound before tokenizing: every token is at least one byte.
        if p.prompt.len() > ctx * 64 {
            return Err(Status::invalid_argument(format!(
                "prompt of {} bytes is far longer than the context of {ctx} tokens",
                p.prompt.len()
            )));
        }
        let max_tokens = p.max_tokens.unwrap_or(16.min(self.cfg.max_tokens));
        if max_tokens == 0 || max_tokens > self.cfg.max_tokens {
            return Err(Status::invalid_argument(format!(
                "max_tokens {max_tokens} is outside 1..={}",
                self.cfg.max_tokens
            )));
        }
        let sampling = SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            seed: p.seed,
        };
        sampling
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let tok = self.tokenizer.clone().ok_or_else(|| {
            Status::failed_precondition("the model has no tokenizer; text prompts cannot be served")
        })?;
        let prompt = p.prompt.clone();
        let ids = tokio::task::spawn_blocking(move || tok.encode(&prompt, true))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(format!("tokenizing the prompt: {e}")))?;
        if ids.is_empty() {
            return Err(Status::invalid_argument(
                "the prompt is empty after tokenization",
            ));
        }
        if ids.len() + max_tokens > ctx {
            return Err(Status::invalid_argument(format!(
                "prompt of {} tokens plus max_tokens {max_tokens} exceeds the context of {ctx} tokens",
                ids.len()
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let n = ids.len();
        let gen = GenRequest {
            prompt_ids: ids,
            max_tokens,
            sampling,
            stop: p.stop.clone(),
            eos_ids: if p.ignore_eos {
                Vec::new()
            } else {
                self.cfg.eos_ids.clone()
            },
            events: tx,
        };
        self.queue.try_send(gen).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Status::resource_exhausted(
                "the request queue is full; retry later (server.max_queue)",
            ),
            mpsc::error::TrySendError::Closed(_) => {
                Status::unavailable("the server is shutting down")
            }
        })?;
        Ok((p, n, rx))
    }
}

/// The canonical gRPC name of a status code (`RESOURCE_EXHAUSTED`), used in
/// stream error messages, which carry no code of their own.
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        InvalidArgument => "INVALID_ARGUMENT",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        Unavailable => "UNAVAILABLE",
        NotFound => "NOT_FOUND",
        FailedPrecondition => "FAILED_PRECONDITION",
        Cancelled => "CANCELLED",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        Internal => "INTERNAL",
        _ => "UNKNOWN",
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceApi {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.ready.load(Ordering::SeqCst),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready =
            self.check_model(&r.name, &r.version).is_ok() && self.ready.load(Ordering::SeqCst);
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "tessera".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["parameters".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        self.check_model(&r.name, &r.version)?;
        Ok(Response::new(ModelMetadataResponse {
            name: self.cfg.model_name.clone(),
            versions: vec![VERSION.into()],
            platform: "tessera".into(),
            inputs: vec![
                meta("text_input", "BYTES"),
                meta("stream", "BOOL"),
                meta("sampling_parameters", "BYTES"),
                meta("exclude_input_in_output", "BOOL"),
            ],
            outputs: vec![
                meta("text_output", "BYTES"),
                meta("finish_reason", "BYTES"),
                meta("num_input_tokens", "UINT32"),
                meta("num_output_tokens", "UINT32"),
            ],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let req = req.into_inner();
        let (p, _, mut rx) = self.submit(&req).await?;
        let mut text = if p.exclude_input {
            String::new()
        } else {
            p.prompt.clone()
        };
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done {
                    finish,
                    prompt_tokens,
                    output_tokens,
                } => {
                    let end = Some((finish.as_str(), prompt_tokens, output_tokens));
                    return Ok(Response::new(response(
                        &req.model_name,
                        &req.id,
                        &text,
                        end,
                        None,
                    )));
                }
                Event::Failed(s) => return Err(s),
            }
        }
        Err(Status::internal("the scheduler dropped the request"))
    }

    type ModelStreamInferStream = ResponseStream;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut incoming = req.into_inner();
        let (out_tx, out_rx) = mpsc::channel::<Result<ModelStreamInferResponse, Status>>(64);
        let api = InferenceApi {
            cfg: ApiConfig {
                model_name: self.cfg.model_name.clone(),
                max_context: self.cfg.max_context,
                max_tokens: self.cfg.max_tokens,
                eos_ids: self.cfg.eos_ids.clone(),
            },
            tokenizer: self.tokenizer.clone(),
            queue: self.queue.clone(),
            ready: self.ready.clone(),
            stats: self.stats.clone(),
        };
        let api = Arc::new(api);
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                let req = match msg {
                    Ok(r) => r,
                    Err(_) => break, // the client went away
                };
                let (api, out) = (api.clone(), out_tx.clone());
                // Each request on the stream runs on its own; responses carry its id.
                tokio::spawn(async move { stream_one(&api, req, out).await });
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serve one request of a `ModelStreamInfer` stream. Errors go back as
/// `error_message` responses; the stream stays open for other requests.
async fn stream_one(
    api: &InferenceApi,
    req: ModelInferRequest,
    out: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
) {
    let send_err = |s: Status| ModelStreamInferResponse {
        error_message: format!("[{}] {}", code_name(s.code()), s.message()),
        infer_response: Some(ModelInferResponse {
            model_name: req.model_name.clone(),
            id: req.id.clone(),
            ..Default::default()
        }),
    };
    let (p, _, mut rx) = match api.submit(&req).await {
        Ok(x) => x,
        Err(s) => {
            let _ = out.send(Ok(send_err(s))).await;
            return;
        }
    };
    let ok = |r: ModelInferResponse| ModelStreamInferResponse {
        error_message: String::new(),
        infer_response: Some(r),
    };
    let mut text = if p.exclude_input || p.stream {
        String::new()
    } else {
        p.prompt.clone()
    };
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            // The client cancelled: return, and dropping `rx` frees the sequence.
            _ = out.closed() => return,
        };
        let Some(ev) = ev else { return };
        match ev {
            Event::Text(t) if p.stream => {
                let r = response(&req.model_name, &req.id, &t, None, Some(false));
                if out.send(Ok(ok(r))).await.is_err() {
                    return; // client gone: dropping `rx` frees the sequence
                }
            }
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                prompt_tokens,
                output_tokens,
            } => {
                let end = Some((finish.as_str(), prompt_tokens, output_tokens));
                let r = response(&req.model_name, &req.id, &text, end, Some(true));
                let _ = out.send(Ok(ok(r))).await;
                return;
            }
            Event::Failed(s) => {
                let _ = out.send(Ok(send_err(s))).await;
                return;
            }
        }
    }
}
