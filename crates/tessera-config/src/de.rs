//! Deserializers for the value kinds serde has no good words for. Each one
//! says what it expects in words a user understands ("an integer >= 1", not
//! "u32"), so serde's message carries the bad value and what is allowed.

use crate::units::{parse_duration, parse_size, DURATION_ALLOWED, SIZE_ALLOWED};
use crate::{Device, Threads, WeightBudget};
use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A section that may be absent or written as an empty key (`offload:`),
/// both of which mean "all defaults".
pub fn section<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

struct IntVisitor {
    min: u64,
    expecting: &'static str,
}

impl Visitor<'_> for IntVisitor {
    type Value = u32;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        if v < self.min {
            return Err(E::invalid_value(Unexpected::Unsigned(v), &self));
        }
        u32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }
}

/// An integer >= 1 (counts and limits).
pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_u64(IntVisitor {
        min: 1,
        expecting: "an integer >= 1",
    })
}

/// An integer >= 0.
pub fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_u64(IntVisitor {
        min: 0,
        expecting: "an integer >= 0",
    })
}

#[derive(serde::Deserialize)]
struct Positive(#[serde(deserialize_with = "positive")] u32);

/// An optional integer >= 1 (`null` or absent means "no limit of our own").
pub fn opt_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(Option::<Positive>::deserialize(d)?.map(|p| p.0))
}

/// A seed: any integer >= 0.
pub fn seed<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer >= 0")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }
    }
    d.deserialize_u64(V)
}

struct NonEmptyString(&'static str);

impl Visitor<'_> for NonEmptyString {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.trim().is_empty() {
            return Err(E::invalid_value(Unexpected::Str(v), &self));
        }
        Ok(v.to_owned())
    }
}

/// An optional, non-empty file system path.
pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    #[derive(serde::Deserialize)]
    struct P(#[serde(deserialize_with = "path")] PathBuf);
    fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        d.deserialize_str(NonEmptyString("a non-empty path"))
            .map(PathBuf::from)
    }
    Ok(Option::<P>::deserialize(d)?.map(|p| p.0))
}

/// A dummy shape name: letters, digits, `-`, `_`, `.`.
pub fn shape_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    const EXPECTING: &str = "a shape name such as `tiny`, `small`, `llama2-7b`, `llama2-70b`, `llama3-8b` (letters, digits, `-`, `_`, `.`)";
    let name = d.deserialize_str(NonEmptyString(EXPECTING))?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(de::Error::invalid_value(Unexpected::Str(&name), &EXPECTING));
    }
    Ok(name)
}

/// `host:port`: an IP socket address (`127.0.0.1:8001`, `[::1]:8001`) or a
/// host name and a port (`localhost:8001`).
pub fn address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    const EXPECTING: &str = "an address `host:port` (e.g. `127.0.0.1:8001`, `0.0.0.0:8001`, `[::1]:8001`, `localhost:8001`)";
    struct V;
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(EXPECTING)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            if v.parse::<std::net::SocketAddr>().is_ok() {
                return Ok(v.to_owned());
            }
            let ok = match v.rsplit_once(':') {
                Some((host, port)) => {
                    port.parse::<u16>().is_ok()
                        && !host.is_empty()
                        && host
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                }
                None => false,
            };
            if ok {
                Ok(v.to_owned())
            } else {
                Err(E::invalid_value(Unexpected::Str(v), &self))
            }
        }
    }
    d.deserialize_str(V)
}

/// A duration such as `30s`, `2m`, `500ms`, `1m30s`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(DURATION_ALLOWED)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
        }
    }
    d.deserialize_str(V)
}

/// The device list: never empty when written.
pub fn devices<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Device>, D::Error> {
    let list = Vec::<Device>::deserialize(d)?;
    if list.is_empty() {
        return Err(de::Error::invalid_length(
            0,
            &"at least one device (`cpu`, a CUDA ordinal or \"cuda:N\"), or leave the key out",
        ));
    }
    Ok(list)
}

const DEVICE_EXPECTING: &str = "`cpu`, a CUDA ordinal (0, 1, ...) or \"cuda:N\"";

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Device;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DEVICE_EXPECTING)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Device, E> {
                u32::try_from(v)
                    .map(Device::Cuda)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Device, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Device, E> {
                if v == "cpu" {
                    return Ok(Device::Cpu);
                }
                v.strip_prefix("cuda:")
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<u32>().ok())
                    .map(Device::Cuda)
                    .ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Threads;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or an integer >= 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Threads, E> {
                match u32::try_from(v) {
                    Ok(n) if n >= 1 => Ok(Threads::Count(n)),
                    _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Threads, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Threads, E> {
                if v == "auto" {
                    Ok(Threads::Auto)
                } else {
                    Err(E::invalid_value(Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for WeightBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WeightBudget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "`auto` or {SIZE_ALLOWED}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WeightBudget, E> {
                if v == 0 {
                    return Err(E::invalid_value(Unexpected::Unsigned(v), &self));
                }
                Ok(WeightBudget::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WeightBudget, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WeightBudget, E> {
                if v == "auto" {
                    return Ok(WeightBudget::Auto);
                }
                parse_size(v)
                    .map(WeightBudget::Bytes)
                    .ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}
