//! Loads the routing traces shipped with the fixture models (`routing_trace.safetensors`):
//! `expert_ids` U16 `[tokens, layers, k]`, optional `expert_weights` F16 of the same shape.
//!
//! The safetensors header is parsed by hand (8-byte little-endian length, then JSON) and
//! every size is checked against the file before anything is allocated.

use std::path::Path;

use io_sched::trace::{Real, Trace, f16_to_f32};
use serde_json::Value;

use crate::error::{Result, SimError};

/// Largest safetensors JSON header accepted.
const MAX_HEADER: u64 = 16 << 20;

fn bad(path: &Path, offset: u64, reason: impl Into<String>) -> SimError {
    SimError::Trace(io_sched::trace::TraceError::Malformed {
        path: path.display().to_string(),
        offset,
        reason: reason.into(),
    })
}

struct TensorInfo {
    dtype: String,
    shape: Vec<u64>,
    start: u64,
    end: u64,
}

fn tensor(
    path: &Path,
    header: &Value,
    name: &str,
    data_start: u64,
    file_len: u64,
) -> Result<Option<TensorInfo>> {
    let Some(t) = header.get(name) else {
        return Ok(None);
    };
    let dtype = t
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(path, 8, format!("{name}: no dtype")))?;
    let shape: Vec<u64> = t
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(path, 8, format!("{name}: no shape")))?
        .iter()
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| bad(path, 8, format!("{name}: shape is not integers")))
        })
        .collect::<Result<_>>()?;
    let off = t
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad(path, 8, format!("{name}: no data_offsets [begin, end]")))?;
    let (a, b) = (
        off[0].as_u64().unwrap_or(u64::MAX),
        off[1].as_u64().unwrap_or(u64::MAX),
    );
    let (start, end) = (data_start.saturating_add(a), data_start.saturating_add(b));
    if a > b || end > file_len {
        return Err(bad(
            path,
            8,
            format!("{name}: data_offsets [{a}, {b}] outside the file ({file_len} bytes)"),
        ));
    }
    Ok(Some(TensorInfo {
        dtype: dtype.to_string(),
        shape,
        start,
        end,
    }))
}

/// Reads `expert_ids` (and `expert_weights` if F16) from a fixture routing trace. `experts`
/// is taken from `config.json` beside the file (`num_experts`) when not given, else from the
/// largest id.
pub fn load_safetensors_trace(path: &Path, experts: Option<u32>) -> Result<Trace> {
    let bytes = std::fs::read(path).map_err(|source| SimError::Io {
        op: "read",
        path: path.display().to_string(),
        source,
    })?;
    let len = bytes.len() as u64;
    if len < 8 {
        return Err(bad(path, 0, "shorter than a safetensors header"));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let hlen = u64::from_le_bytes(n);
    if hlen > MAX_HEADER || 8 + hlen > len {
        return Err(bad(
            path,
            0,
            format!("header length {hlen} is larger than the file or {MAX_HEADER}"),
        ));
    }
    let header: Value = serde_json::from_slice(&bytes[8..8 + hlen as usize])
        .map_err(|e| bad(path, 8, format!("header JSON: {e}")))?;
    let data_start = 8 + hlen;
    let ids = tensor(path, &header, "expert_ids", data_start, len)?
        .ok_or_else(|| bad(path, 8, "no expert_ids tensor"))?;
    if ids.dtype != "U16" || ids.shape.len() != 3 {
        return Err(bad(
            path,
            8,
            format!(
                "expert_ids must be U16 [tokens, layers, k], is {} {:?}",
                ids.dtype, ids.shape
            ),
        ));
    }
    let (tokens, layers, k) = (ids.shape[0], ids.shape[1], ids.shape[2]);
    let count = tokens
        .checked_mul(layers)
        .and_then(|x| x.checked_mul(k))
        .ok_or_else(|| bad(path, 8, "expert_ids shape overflows"))?;
    if count.checked_mul(2) != Some(ids.end - ids.start)
        || layers == 0
        || k == 0
        || layers > u32::MAX as u64
        || k > u32::MAX as u64
    {
        return Err(bad(
            path,
            ids.start,
            format!(
                "expert_ids shape {:?} does not match its {} data bytes",
                ids.shape,
                ids.end - ids.start
            ),
        ));
    }
    let v: Vec<u32> = bytes[ids.start as usize..ids.end as usize]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .collect();
    let experts = match experts {
        Some(e) => e,
        None => experts_from_config(path).unwrap_or_else(|| v.iter().max().map_or(1, |m| m + 1)),
    };
    let mut t = Trace::from_ids(layers as u32, experts, k as u32, v)?;
    let weights = tensor(path, &header, "expert_weights", data_start, len)?;
    if let Some(w) =
        weights.filter(|w| w.dtype == "F16" && w.shape == ids.shape && w.end - w.start == count * 2)
    {
        let ws = bytes[w.start as usize..w.end as usize]
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        t.weights = Some(ws);
        t.header.weights = Some(Real::F16);
    }
    Ok(t)
}

fn experts_from_config(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path.parent()?.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    ["num_experts", "num_local_experts", "n_routed_experts"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .map(|x| x as u32)
}

/// Loads a trace: a `.safetensors` fixture trace or a flashmoe binary trace.
pub fn load_trace(path: &Path) -> Result<Trace> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        load_safetensors_trace(path, None)
    } else {
        Ok(Trace::read(path)?)
    }
}
