//! The token embedding table, kept where it costs least memory. Decode reads one row of it
//! per token, so a table that is not also the output head (`tie_word_embeddings`) stays in
//! its file and each row is read with `pread` when its token comes: the page cache holds the
//! rows in use and, under a memory limit, the kernel reclaims them rather than the process
//! being killed. At Qwen3-30B-A3B's geometry that keeps 175 MB (4-bit) out of the process's
//! memory; at Qwen3.5-397B's, 573 MB. A tied table is the output head's, read through it.
//!
//! Rows are dequantized with [`flashmoe_backends::quant::dequantize_row`], the function the
//! CPU backend's own `embedding` uses, so on the CPU the hidden state is bit for bit what a
//! resident table gives.

use crate::error::{BackendContext, EngineError, Result};
use crate::quant_tensors::{is_quantized, matrix_format, module_of};
use crate::tensor_reader::TensorReader;
use crate::weights::Checkpoint;
use flashmoe_backends::ComputeBackend;
use flashmoe_backends::profile::Phase;
use flashmoe_backends::quant::{MatrixLayout, dequantize_row};
use safetensors::Dtype;
use std::time::Instant;

/// Where the model's token embeddings are.
pub(crate) enum Embeddings<W> {
    /// The output head's table (tied weights): its rows are read through the backend.
    Tied,
    /// In the checkpoint file, a row read per token.
    File(FileRows),
    /// Loaded on the backend (a layout [`FileRows`] cannot read; see [`FileRows::open`]).
    Resident(W),
}

impl<W> Embeddings<W> {
    /// Token `token`'s row into `out` (`lm_head` is the output head's table).
    pub(crate) fn token<B: ComputeBackend<Weight = W>>(
        &mut self,
        be: &B,
        lm_head: &W,
        token: u32,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.rows(be, lm_head, &[token], out)
    }

    /// The rows of `tokens`, in order, into `out` (at least `tokens.len() x hidden` long).
    pub(crate) fn rows<B: ComputeBackend<Weight = W>>(
        &mut self,
        be: &B,
        lm_head: &W,
        tokens: &[u32],
        out: &mut B::Tensor,
    ) -> Result<()> {
        let ctx = || "model.embed_tokens".to_string();
        let table = match self {
            Embeddings::Tied => lm_head,
            Embeddings::Resident(w) => w,
            Embeddings::File(f) => {
                let started = be.profile().map(|_| Instant::now());
                let values = f.rows(tokens)?;
                if let (Some(p), Some(t)) = (be.profile(), started) {
                    p.record(Phase::Embedding, t.elapsed());
                }
                return be.write_range(values, out, 0).ctx(ctx);
            }
        };
        match tokens {
            [t] => be.embedding(table, *t, out),
            _ => be.embedding_rows(table, tokens, out),
        }
        .ctx(ctx)
    }
}

/// A `[rows x cols]` table read from its checkpoint a row at a time: the stored float rows,
/// or a quantized module's codes, scales and biases rows.
pub(crate) struct FileRows {
    rows: usize,
    /// One row's layout (the table's format, one row).
    row: MatrixLayout,
    /// Each stored part with the offset of its row in a one-row record: the float data, or the
    /// codes then the f16 scales and biases.
    parts: Vec<(TensorReader, usize)>,
    record: Vec<u8>,
    values: Vec<f32>,
}

impl FileRows {
    /// The table `name` of `[rows x cols]`, checked as the resident loader checks it; `None`
    /// when its scales or biases are not f16 (MLX's bf16 ones are converted, with a rounding
    /// check, only when the table is loaded whole).
    pub(crate) fn open(
        ckpt: &Checkpoint,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Self>> {
        let format = matrix_format(ckpt, name, rows, cols)?;
        let row = format.layout(1, cols).ctx(|| format!("`{name}`"))?;
        let parts = if is_quantized(ckpt, name) {
            let module = module_of(name);
            let part = |suffix: &str| ckpt.reader(&format!("{module}.{suffix}"));
            let (scales, biases) = (part("scales")?, part("biases")?);
            if scales.dtype() != Dtype::F16 || biases.dtype() != Dtype::F16 {
                return Ok(None);
            }
            vec![
                (part("weight")?, 0),
                (scales, row.scales_offset),
                (biases, row.biases_offset),
            ]
        } else {
            vec![(ckpt.reader(name)?, 0)]
        };
        let this = Self {
            rows,
            record: vec![0; row.total],
            values: vec![0.0; cols],
            row,
            parts,
        };
        for (i, (reader, _)) in this.parts.iter().enumerate() {
            let want = this.part_len(i) * rows;
            if reader.len() != want {
                return Err(EngineError::Safetensors {
                    path: reader.path().to_path_buf(),
                    reason: format!(
                        "`{name}`: a part holds {} bytes, {rows} rows of it need {want}",
                        reader.len()
                    ),
                });
            }
        }
        Ok(Some(this))
    }

    /// Bytes of one row of part `i`.
    fn part_len(&self, i: usize) -> usize {
        let r = &self.row;
        match i {
            0 => r.data_len,
            _ => 2 * r.cols / r.format.group().unwrap_or(r.cols),
        }
    }

    /// The rows of `tokens` as f32 values, one after another.
    fn rows(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let cols = self.row.cols;
        self.values.resize(tokens.len() * cols, 0.0);
        for (i, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            if t >= self.rows {
                return Err(EngineError::OutOfRange {
                    what: "token id",
                    value: t,
                    limit: self.rows,
                });
            }
            for p in 0..self.parts.len() {
                let len = self.part_len(p);
                let (reader, at) = &self.parts[p];
                reader.read_into(t * len, &mut self.record[*at..at + len])?;
            }
            dequantize_row(
                &self.record,
                &self.row,
                0,
                &mut self.values[i * cols..][..cols],
            )
            .ctx(|| "model.embed_tokens".into())?;
        }
        Ok(&self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hybrid::Loader;
    use flashmoe_backends::CpuBackend;
    use half::{bf16, f16};
    use safetensors::tensor::TensorView;
    use std::path::Path;

    const ROWS: usize = 5;
    const COLS: usize = 128;

    fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> TensorView<'_> {
        TensorView::new(dtype, shape, data).expect("view")
    }

    fn le<T: Copy>(v: &[T], to: impl Fn(T) -> [u8; 2]) -> Vec<u8> {
        v.iter().flat_map(|&x| to(x)).collect()
    }

    /// A file with a bf16 table `f.weight`, a 4-bit one `q.*` (f16 scales and biases, groups
    /// of 64) and one with bf16 scales `m.*` (MLX's), every value distinct per row.
    fn write_tables(path: &Path) {
        let vals: Vec<bf16> = (0..ROWS * COLS)
            .map(|i| bf16::from_f32((i as f32 * 0.37).sin()))
            .collect();
        let codes: Vec<u8> = (0..ROWS * COLS / 2).map(|i| (i * 29 % 251) as u8).collect();
        let groups = ROWS * COLS / 64;
        let scales: Vec<f16> = (0..groups)
            .map(|g| f16::from_f32(0.01 + g as f32 * 0.003))
            .collect();
        let biases: Vec<f16> = (0..groups)
            .map(|g| f16::from_f32(-0.05 * g as f32))
            .collect();
        let (f_bytes, s_bytes, b_bytes) = (
            le(&vals, bf16::to_le_bytes),
            le(&scales, f16::to_le_bytes),
            le(&biases, f16::to_le_bytes),
        );
        let mlx_s = le(
            &scales
                .iter()
                .map(|s| bf16::from_f32(s.to_f32()))
                .collect::<Vec<_>>(),
            bf16::to_le_bytes,
        );
        let (cw, g) = (COLS * 4 / 32, COLS / 64);
        let tensors = vec![
            ("f.weight", view(Dtype::BF16, vec![ROWS, COLS], &f_bytes)),
            ("q.weight", view(Dtype::U32, vec![ROWS, cw], &codes)),
            ("q.scales", view(Dtype::F16, vec![ROWS, g], &s_bytes)),
            ("q.biases", view(Dtype::F16, vec![ROWS, g], &b_bytes)),
            ("m.weight", view(Dtype::U32, vec![ROWS, cw], &codes)),
            ("m.scales", view(Dtype::BF16, vec![ROWS, g], &mlx_s)),
            ("m.biases", view(Dtype::F16, vec![ROWS, g], &b_bytes)),
        ];
        safetensors::serialize_to_file(tensors, None, path).expect("write");
    }

    /// Rows read from the file are bit for bit the rows a resident table gives, float and
    /// 4-bit, one token or several; a table with bf16 scales is not read from the file.
    #[test]
    fn file_rows_equal_the_resident_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_tables(&path);
        let ckpt = Checkpoint::open_file(&path, None).unwrap();
        let be = CpuBackend::new();
        let ld = Loader {
            be: &be,
            ckpt: &ckpt,
        };
        let tokens = [3u32, 0, 4, 3];
        for name in ["f.weight", "q.weight"] {
            let resident = ld.matrix(name, ROWS, COLS).unwrap();
            let mut want = be.zeros(tokens.len() * COLS).unwrap();
            be.embedding_rows(&resident, &tokens, &mut want).unwrap();
            let want = be.read(&want).unwrap();
            let mut file =
                Embeddings::File(FileRows::open(&ckpt, name, ROWS, COLS).unwrap().unwrap());
            let mut got = be.zeros(tokens.len() * COLS).unwrap();
            file.rows(&be, &resident, &tokens, &mut got).unwrap();
            let got = be.read(&got).unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{name}"
            );
            assert!(want.iter().any(|&v| v != 0.0), "{name}: the rows hold data");
            let mut one = be.zeros(COLS).unwrap();
            file.token(&be, &resident, 4, &mut one).unwrap();
            assert_eq!(be.read(&one).unwrap(), want[2 * COLS..3 * COLS], "{name}");
        }
        assert!(
            FileRows::open(&ckpt, "m.weight", ROWS, COLS)
                .unwrap()
                .is_none()
        );
    }

    /// A token id past the table, and a file truncated after loading, are errors (the output
    /// untouched), never a read of other bytes.
    #[test]
    fn bad_token_and_truncated_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_tables(&path);
        let ckpt = Checkpoint::open_file(&path, None).unwrap();
        let be = CpuBackend::new();
        let head = Loader {
            be: &be,
            ckpt: &ckpt,
        }
        .matrix("f.weight", ROWS, COLS)
        .unwrap();
        let mut table = Embeddings::File(
            FileRows::open(&ckpt, "q.weight", ROWS, COLS)
                .unwrap()
                .unwrap(),
        );
        drop(ckpt);
        let mut out = be.upload(&[7.0; COLS]).unwrap();
        let err = table.token(&be, &head, ROWS as u32, &mut out).unwrap_err();
        assert!(err.to_string().contains("token id"), "{err}");
        assert_eq!(be.read(&out).unwrap(), [7.0; COLS]);
        // Cut the file just past row 0 of the `q` part stored last: row 0 stays readable, the
        // last row of that part is gone.
        let bytes = std::fs::read(&path).unwrap();
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let cut = ["weight", "scales", "biases"]
            .iter()
            .map(|p| {
                let info = meta.info(&format!("q.{p}")).unwrap();
                let (a, b) = info.data_offsets;
                8 + n + a + (b - a) / ROWS
            })
            .max()
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        table
            .token(&be, &head, 0, &mut out)
            .expect("row 0 lies before the cut");
        let err = table
            .token(&be, &head, ROWS as u32 - 1, &mut out)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("t.safetensors") && msg.contains("offset"),
            "{msg}"
        );
    }
}
