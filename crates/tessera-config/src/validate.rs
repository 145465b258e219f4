//! Pass 3: rules across keys, after every single value has passed the schema.
//! Fills in the one default that depends on another key (`devices`).

use crate::units::format_duration;
use crate::{
    Collective, Config, ConfigError, DType, Device, ModelFormat, RestartPolicy, WeightBudget,
};
use std::path::Path;

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn fail(
        &self,
        key: impl Into<String>,
        value: impl Into<String>,
        problem: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Result<(), ConfigError> {
        Err(ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            value: value.into(),
            problem: problem.into(),
            allowed: allowed.into(),
        })
    }
}

fn device_list(devices: &[Device]) -> String {
    let names: Vec<String> = devices.iter().map(Device::to_string).collect();
    format!("[{}]", names.join(", "))
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::Int8 => "int8",
        DType::Int4 => "int4",
        DType::Bf16 => "bf16",
        DType::F16 => "f16",
    }
}

pub(crate) fn validate(config: &mut Config, file: &Path) -> Result<(), ConfigError> {
    let c = Checker { file };

    // model
    let model = &config.model;
    if model.format == ModelFormat::Dummy {
        if let Some(path) = &model.path {
            c.fail(
                "model.path",
                path.display().to_string(),
                "`format: dummy` generates its weights and reads no file",
                "leave `model.path` out with `format: dummy`, or set `model.format` to auto, hf or gguf",
            )?;
        }
        if model.dummy.is_none() {
            c.fail(
                "model.dummy",
                "(missing)",
                "`format: dummy` needs the shape of the weights to generate",
                "a `model.dummy` section, e.g. `dummy: {shape: llama2-7b, seed: 0}`",
            )?;
        }
    } else {
        if model.path.is_none() {
            c.fail(
                "model.path",
                "(missing)",
                "every format but `dummy` reads a checkpoint",
                "a Hugging Face checkpoint directory or a .gguf file (or `format: dummy` without a path)",
            )?;
        }
        if model.dummy.is_some() {
            c.fail(
                "model.dummy",
                "(a dummy section)",
                "`model.dummy` is only used with `format: dummy`",
                "leave `model.dummy` out, or set `model.format: dummy`",
            )?;
        }
    }

    // parallelism
    let p = &mut config.parallelism;
    let tp = p.tensor_parallel as usize;
    if p.devices.is_empty() {
        p.devices = vec![Device::Cpu; tp];
    }
    let p = &config.parallelism;
    if p.devices.len() != tp {
        c.fail(
            "parallelism.devices",
            device_list(&p.devices),
            format!(
                "{} device(s) listed but `parallelism.tensor_parallel` is {tp}",
                p.devices.len()
            ),
            format!(
                "exactly {tp} device(s), one per worker in rank order (or leave `devices` out to run every worker on cpu)"
            ),
        )?;
    }
    let first_is_cpu = p.devices[0] == Device::Cpu;
    for (i, device) in p.devices.iter().enumerate() {
        if (*device == Device::Cpu) != first_is_cpu {
            c.fail(
                format!("parallelism.devices[{i}]"),
                device.to_string(),
                format!(
                    "cpu and CUDA devices are mixed (devices[0] is {})",
                    p.devices[0]
                ),
                if first_is_cpu {
                    "`cpu` for every worker, like devices[0]"
                } else {
                    "a CUDA ordinal for every worker, like devices[0]"
                },
            )?;
        }
        if let Device::Cuda(_) = device {
            if let Some(j) = p.devices[..i].iter().position(|d| d == device) {
                c.fail(
                    format!("parallelism.devices[{i}]"),
                    device.to_string(),
                    format!("{device} is already devices[{j}]; one GPU runs one worker"),
                    "distinct CUDA ordinals",
                )?;
            }
        }
    }
    let cpu = p.is_cpu();
    if cpu && p.collective == Collective::Nccl {
        c.fail(
            "parallelism.collective",
            "nccl",
            "NCCL runs only between CUDA devices and the devices are cpu",
            "`tcp` or `auto` with cpu devices (`auto` picks tcp)",
        )?;
    }

    // dtype against the devices
    let dtype = config.model.dtype;
    if cpu && matches!(dtype, DType::Bf16 | DType::F16) {
        c.fail(
            "model.dtype",
            dtype_name(dtype),
            "half-precision weights run only on CUDA devices and the devices are cpu",
            "`f32`, `int8` or `int4` with cpu devices",
        )?;
    }

    // offload: rules apply only when it is on
    let o = &config.offload;
    if o.enabled {
        if o.prefetch_depth == 0 {
            c.fail(
                "offload.prefetch_depth",
                "0",
                "with offload enabled, a prefetch depth of 0 never copies a layer ahead of its use",
                "an integer >= 1 (2 is a good start)",
            )?;
        }
        if !matches!(dtype, DType::Int8 | DType::Int4) {
            c.fail(
                "model.dtype",
                dtype_name(dtype),
                "offload streams int8 or int4 weights from host memory",
                "`int8` (or `int4`) with `offload.enabled: true`",
            )?;
        }
        if let Some(g) = o.link_gbps {
            if !(g.is_finite() && g > 0.0) {
                c.fail(
                    "offload.link_gbps",
                    g.to_string(),
                    "a link bandwidth must be a positive number of GB/s",
                    "a number > 0, e.g. 25 for PCIe Gen4 x16 or 50 for Gen5 x16",
                )?;
            }
        }
        if cpu && o.weight_budget == WeightBudget::Auto {
            c.fail(
                "offload.weight_budget",
                "auto",
                "`auto` measures free GPU memory and the devices are cpu",
                "an explicit size on cpu (e.g. \"2GiB\"), the size of the bounded arena the streamer fills",
            )?;
        }
    }

    // server
    let s = &config.server;
    if let Some(max_context) = s.max_context {
        if s.max_tokens > max_context {
            c.fail(
                "server.max_tokens",
                s.max_tokens.to_string(),
                format!("more new tokens than `server.max_context` ({max_context}) can hold"),
                format!("an integer from 1 to {max_context}"),
            )?;
        }
    }

    // supervision
    let v = &config.supervision;
    if v.restart_policy == RestartPolicy::OnFailure && v.max_restarts == 0 {
        c.fail(
            "supervision.max_restarts",
            "0",
            "`restart_policy: on-failure` with no restarts allowed",
            "an integer >= 1 with on-failure (or `restart_policy: never`)",
        )?;
    }
    if v.collective_timeout > v.step_timeout {
        c.fail(
            "supervision.collective_timeout",
            format_duration(v.collective_timeout),
            format!(
                "longer than `supervision.step_timeout` ({}), which contains it: the step would always time out first",
                format_duration(v.step_timeout)
            ),
            format!(
                "a duration up to {}",
                format_duration(v.step_timeout)
            ),
        )?;
    }
    Ok(())
}
