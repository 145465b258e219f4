//! The YAML config of `tessera launch`: schema, defaults and validation.
//!
//! One file describes a run: the model, how it is split over devices
//! (`parallelism`), CPU offload (`offload`), the public server (`server`) and
//! what happens when a worker dies (`supervision`). `docs/config.md` documents
//! every key.
//!
//! Loading happens in three passes, and nothing starts unless all pass:
//! 1. the text must be YAML ([`ConfigError::Syntax`]);
//! 2. it must fit the schema: no unknown keys anywhere, every value of the
//!    right type and range ([`ConfigError::Schema`], with line and column);
//! 3. the combination must make sense: as many devices as `tensor_parallel`,
//!    no `nccl` on cpu, ... ([`ConfigError::Invalid`]).
//!
//! Every error names the file, the key path (`parallelism.devices[1]`), the
//! bad value and what is allowed.
//!
//! What this crate does not check, because it needs more than the file: that
//! the model path exists, that the dummy shape is one `tessera-model` knows,
//! that head counts divide among the workers, and that CUDA ordinals exist
//! on this machine. The launcher checks those before it spawns a worker.

mod de;
mod error;
pub mod units;
mod validate;

pub use error::{ConfigError, Location};

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the sections `model`, `parallelism`, `offload`, `server`, `supervision`"
)]
pub struct Config {
    /// Which weights to run. The only required section.
    #[serde(deserialize_with = "de::section")]
    pub model: ModelConfig,
    #[serde(default, deserialize_with = "de::section")]
    pub parallelism: ParallelismConfig,
    #[serde(default, deserialize_with = "de::section")]
    pub offload: OffloadConfig,
    #[serde(default, deserialize_with = "de::section")]
    pub server: ServerConfig,
    #[serde(default, deserialize_with = "de::section")]
    pub supervision: SupervisionConfig,
}

/// `model:`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping with the keys `path`, `format`, `dtype`, `kv_dtype`, `dummy`"
)]
pub struct ModelConfig {
    /// HF checkpoint directory or `.gguf` file. Required unless `format` is
    /// `dummy`. A relative path is taken from the working directory of
    /// `tessera launch`, not from the config file's folder.
    #[serde(deserialize_with = "de::opt_path")]
    pub path: Option<PathBuf>,
    pub format: ModelFormat,
    /// Run-time weight type.
    pub dtype: DType,
    /// KV cache element type (`f32`, the default, or `bf16`: half the cache
    /// memory on CUDA, keys and values rounded to bfloat16 when stored).
    pub kv_dtype: KvDType,
    /// Shape and seed of random weights; only with `format: dummy`.
    pub dummy: Option<DummyModel>,
}

/// `model.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// A directory is a Hugging Face checkpoint, a file a GGUF file.
    #[default]
    Auto,
    Hf,
    Gguf,
    /// Seeded random weights of a named shape; no file.
    Dummy,
}

/// `model.dtype`: the weight type at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    Int8,
    /// Int4 (-8..7), one scale per group of 32 (int8's format with 16 levels).
    Int4,
    Bf16,
    F16,
}

/// `model.kv_dtype`: the KV cache element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDType {
    #[default]
    F32,
    Bf16,
}

impl KvDType {
    pub fn name(self) -> &'static str {
        match self {
            KvDType::F32 => "f32",
            KvDType::Bf16 => "bf16",
        }
    }
}

/// `model.dummy`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys `shape`, `seed`"
)]
pub struct DummyModel {
    /// A shape known to `tessera-model` (`tiny`, `small`, `llama2-7b`, ...).
    #[serde(deserialize_with = "de::shape_name")]
    pub shape: String,
    #[serde(default, deserialize_with = "de::seed")]
    pub seed: u64,
}

/// `parallelism:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping with the keys `tensor_parallel`, `devices`, `threads_per_worker`, `collective`"
)]
pub struct ParallelismConfig {
    /// Number of worker processes, one shard of every weight each.
    #[serde(deserialize_with = "de::positive")]
    pub tensor_parallel: u32,
    /// One device per worker, rank order. Left out: `cpu` for every worker.
    /// Always filled in (and exactly `tensor_parallel` long) after loading.
    #[serde(deserialize_with = "de::devices")]
    pub devices: Vec<Device>,
    pub threads_per_worker: Threads,
    pub collective: Collective,
}

impl Default for ParallelismConfig {
    fn default() -> Self {
        ParallelismConfig {
            tensor_parallel: 1,
            devices: Vec::new(),
            threads_per_worker: Threads::Auto,
            collective: Collective::Auto,
        }
    }
}

impl ParallelismConfig {
    /// Whether the workers run on CPUs (all devices are `cpu`; mixing is rejected).
    pub fn is_cpu(&self) -> bool {
        self.devices.iter().all(|d| *d == Device::Cpu)
    }

    /// The collective the workers will use: `auto` becomes `nccl` on CUDA
    /// devices and `tcp` on CPUs, and one worker needs none (`local`).
    pub fn resolved_collective(&self) -> ResolvedCollective {
        if self.tensor_parallel == 1 {
            return ResolvedCollective::Local;
        }
        match self.collective {
            Collective::Nccl => ResolvedCollective::Nccl,
            Collective::Tcp => ResolvedCollective::Tcp,
            Collective::Auto if self.is_cpu() => ResolvedCollective::Tcp,
            Collective::Auto => ResolvedCollective::Nccl,
        }
    }

    /// Threads each worker's CPU pool gets, given the cores of the machine:
    /// `auto` shares them evenly among the workers (at least one each).
    pub fn threads_per_worker(&self, available_cores: usize) -> usize {
        match self.threads_per_worker {
            Threads::Count(n) => n as usize,
            Threads::Auto => (available_cores / self.tensor_parallel.max(1) as usize).max(1),
        }
    }
}

/// One entry of `parallelism.devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA ordinal, written `0` or `"cuda:0"`.
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `parallelism.threads_per_worker`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// The machine's cores divided evenly among the workers.
    #[default]
    Auto,
    Count(u32),
}

/// `parallelism.collective`: how the workers all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Collective {
    /// `nccl` on CUDA devices, `tcp` on CPUs.
    #[default]
    Auto,
    Nccl,
    Tcp,
}

/// The collective after `auto` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedCollective {
    /// One worker: nothing to reduce.
    Local,
    Tcp,
    Nccl,
}

/// `offload:` stage-3 weight streaming (`tessera-offload`, docs/offload.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping with the keys `enabled`, `weight_budget`, `prefetch_depth`, `pin_memory`, `resident_layers`, `link_gbps`"
)]
pub struct OffloadConfig {
    pub enabled: bool,
    /// Device bytes for resident and streamed weights, per worker.
    pub weight_budget: WeightBudget,
    /// How many layers ahead the copy stream runs.
    #[serde(deserialize_with = "de::non_negative")]
    pub prefetch_depth: u32,
    /// Keep host copies in page-locked memory (CUDA only; no effect on cpu).
    pub pin_memory: bool,
    /// Keep exactly this many layers resident instead of as many as fit
    /// (checked against the model's layer count by `tessera plan`/`launch`).
    pub resident_layers: Option<u32>,
    /// Host-to-device bandwidth in GB/s for `tessera plan`'s prediction;
    /// `None`: 25 (PCIe Gen4 x16, effective).
    pub link_gbps: Option<f64>,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            enabled: false,
            weight_budget: WeightBudget::Auto,
            prefetch_depth: 2,
            pin_memory: true,
            resident_layers: None,
            link_gbps: None,
        }
    }
}

/// `offload.weight_budget`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightBudget {
    /// Free device memory after the KV cache, activations and a margin.
    #[default]
    Auto,
    Bytes(u64),
}

/// `server:` the public endpoint and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping with the keys `grpc_address`, `max_queue`, `max_batch`, `max_context`, `max_tokens`"
)]
pub struct ServerConfig {
    /// KServe v2 / Triton gRPC listen address.
    #[serde(deserialize_with = "de::address")]
    pub grpc_address: String,
    /// Requests waiting beyond this are refused (RESOURCE_EXHAUSTED).
    #[serde(deserialize_with = "de::positive")]
    pub max_queue: u32,
    /// Sequences in one engine step.
    #[serde(deserialize_with = "de::positive")]
    pub max_batch: u32,
    /// Prompt + generated tokens per sequence; `None`: the model's context length.
    #[serde(deserialize_with = "de::opt_positive")]
    pub max_context: Option<u32>,
    /// Most new tokens one request may ask for.
    #[serde(deserialize_with = "de::positive")]
    pub max_tokens: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_address: "127.0.0.1:8001".into(),
            max_queue: 256,
            max_batch: 8,
            max_context: None,
            max_tokens: 1024,
        }
    }
}

/// `supervision:` what happens when a worker dies or stops answering.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping with the keys `restart_policy`, `max_restarts`, `worker_start_timeout`, `step_timeout`, `collective_timeout`"
)]
pub struct SupervisionConfig {
    pub restart_policy: RestartPolicy,
    /// Restarts of the worker group before giving up (`on-failure` only).
    #[serde(deserialize_with = "de::non_negative")]
    pub max_restarts: u32,
    /// From spawn to a successful readiness RPC (includes loading the shard).
    #[serde(deserialize_with = "de::duration")]
    pub worker_start_timeout: Duration,
    /// One engine step RPC, all ranks.
    #[serde(deserialize_with = "de::duration")]
    pub step_timeout: Duration,
    /// One collective operation; a dead peer fails it after this long.
    #[serde(deserialize_with = "de::duration")]
    pub collective_timeout: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            restart_policy: RestartPolicy::Never,
            max_restarts: 3,
            worker_start_timeout: Duration::from_secs(600),
            step_timeout: Duration::from_secs(60),
            collective_timeout: Duration::from_secs(30),
        }
    }
}

/// `supervision.restart_policy`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// A dead worker ends the run: the launcher exits non-zero.
    #[default]
    Never,
    /// Restart the whole worker group, up to `max_restarts` times.
    OnFailure,
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::from_str(&text, path)
    }

    /// Parse and validate config text; `origin` is the file it came from,
    /// named in every error.
    pub fn from_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        // Pass 1: YAML syntax, and an empty file.
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| syntax_error(origin, e))?;
        if value.is_null() {
            return Err(ConfigError::Schema {
                file: origin.to_path_buf(),
                key: "model".into(),
                location: None,
                message: "the file has no settings; a config needs at least a `model` section"
                    .into(),
            });
        }
        // Pass 2: the schema, from the text so errors keep line and column.
        let de = serde_yaml::Deserializer::from_str(text);
        let mut config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| schema_error(origin, e))?;
        // Pass 3: combinations.
        validate::validate(&mut config, origin)?;
        Ok(config)
    }
}

fn location_of(e: &serde_yaml::Error) -> Option<Location> {
    e.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    })
}

/// serde_yaml's message without its own " at line L column C" suffix.
fn bare_message(e: &serde_yaml::Error, location: Option<Location>) -> String {
    let text = e.to_string();
    if let Some(l) = location {
        let suffix = format!(" at line {} column {}", l.line, l.column);
        if let Some(stripped) = text.strip_suffix(&suffix) {
            return stripped.to_owned();
        }
    }
    text
}

fn syntax_error(file: &Path, e: serde_yaml::Error) -> ConfigError {
    let location = location_of(&e);
    let message = bare_message(&e, location);
    // A key written twice in one mapping is a schema error with a key path:
    // serde_yaml says `parallelism: duplicate entry with key "tensor_parallel"`.
    const DUPLICATE: &str = "duplicate entry with key \"";
    if let Some(at) = message.find(DUPLICATE) {
        let parent = message[..at].strip_suffix(": ").unwrap_or("");
        let name = message[at + DUPLICATE.len()..].trim_end_matches('"');
        return ConfigError::Schema {
            file: file.to_path_buf(),
            key: join_key(parent, name),
            location,
            message: format!("key `{name}` appears more than once"),
        };
    }
    ConfigError::Syntax {
        file: file.to_path_buf(),
        location,
        message,
    }
}

/// `path`, then each of its ancestors: `a.b[1]`, `a.b`, `a`.
fn ancestors(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut p = path;
    while !p.is_empty() {
        out.push(p);
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => break,
        }
    }
    out
}

/// The first `` `name` `` in a serde message.
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn schema_error(file: &Path, e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = match e.path().to_string() {
        p if p == "." => String::new(),
        p => p,
    };
    let inner = e.into_inner();
    let location = location_of(&inner);
    let mut message = bare_message(&inner, location);
    // serde_yaml puts its own path of the value (or of its parent) first.
    for prefix in ancestors(&path) {
        if let Some(rest) = message.strip_prefix(&format!("{prefix}: ")) {
            message = rest.to_owned();
            break;
        }
    }
    let mut key = path.clone();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        // The path already ends with the unknown key.
        message = format!(
            "unknown key {}",
            rest.replacen(", expected one of ", "; allowed keys: ", 1)
                .replacen(", expected ", "; allowed keys: ", 1)
                .replace("` or `", "`, `")
        );
    } else if message.starts_with("missing field ") {
        let name = backticked(&message).unwrap_or_default().to_owned();
        key = join_key(&path, &name);
        message = format!("required key `{name}` is missing");
    } else if message.starts_with("duplicate field ") {
        let name = backticked(&message).unwrap_or_default().to_owned();
        key = join_key(&path, &name);
        message = format!("key `{name}` appears more than once");
    } else {
        message = message
            .replacen("unknown variant ", "unknown value ", 1)
            .replacen(", expected one of ", "; allowed: one of ", 1)
            .replacen(", expected ", "; allowed: ", 1);
    }
    if key.is_empty() {
        key = "(top level)".into();
    }
    ConfigError::Schema {
        file: file.to_path_buf(),
        key,
        location,
        message,
    }
}
