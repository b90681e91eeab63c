//! Layouts: opened from a manifest, or built record by record; queried for records.

use std::ffi::{CString, c_char};

use io_sched::{ExpertKey, ExpertLayout, LayoutBuilder, Manifest};

use crate::error::{CallError, FmioStatus, SchedErrorExt, ffi, ffi_value};
use flashmoe_capi_common::args::{handle, handle_mut, need_out, str_arg, write_out};

/// Where the experts live: `(layer, expert) → (file, offset, length, checksum)`. Opaque.
/// Immutable once made: any number of threads may query one layout at once.
pub struct FmioLayout {
    pub(crate) layout: ExpertLayout,
    /// The file paths as C strings, by file index.
    paths: Vec<CString>,
}

impl FmioLayout {
    fn new(layout: ExpertLayout) -> Self {
        let paths = layout
            .files()
            .iter()
            .map(|p| CString::new(p.to_string_lossy().replace('\0', " ")).unwrap_or_default())
            .collect();
        Self { layout, paths }
    }
}

/// A layout being described record by record. Opaque; one thread at a time.
pub struct FmioLayoutBuilder {
    inner: Option<LayoutBuilder>,
    layers: u32,
    experts: u32,
}

/// Most records a layout may have (a 60-layer x 512-expert model has 30,720): a guard against
/// a bad count allocating without bound.
pub const FMIO_MAX_RECORDS: u64 = 1 << 24;

/// One expert record of a layout.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FmioRecord {
    /// Index of the file it lies in (`fmio_layout_file_path` names it).
    pub file: u32,
    /// Byte offset of the record in that file (a multiple of 4096).
    pub offset: u64,
    /// Payload length in bytes (what `fmio_guard_get` hands out).
    pub len: u64,
    /// The payload's checksum (`fmio_checksum` of the bytes).
    pub checksum: u64,
}

/// Opens `manifest_path` (a `manifest.json` of packed expert files), validating it against the
/// files. On success `*out` is a layout to free with `fmio_layout_free`.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `manifest_path` must be a NUL-terminated string; `out` valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_open_manifest(
    manifest_path: *const c_char,
    out: *mut *mut FmioLayout,
) -> FmioStatus {
    const F: &str = "fmio_layout_open_manifest";
    ffi(F, || {
        need_out(F, "out", out)?;
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { str_arg(F, "manifest_path", manifest_path) }?;
        let (layout, _meta) = Manifest::load(path).map_err(|e| CallError::sched(F, &e))?;
        let boxed = Box::into_raw(Box::new(FmioLayout::new(layout)));
        // SAFETY: `out` checked non-NULL; the caller promises it is writable.
        unsafe { write_out(F, "out", out, boxed) }
    })
}

/// Frees a layout (NULL is ignored). Sessions opened over it keep their own copy.
///
/// # Safety
/// `layout` must come from this library and not be freed already; no other thread may be using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_free(layout: *mut FmioLayout) {
    // SAFETY: forwarded from this function's contract.
    unsafe { flashmoe_capi_common::args::free_handle(layout) }
}

/// Layers of the layout (0 if `layout` is NULL). Any thread.
///
/// # Safety
/// `layout` must be NULL or a live layout.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_num_layers(layout: *const FmioLayout) -> u32 {
    ffi_value("fmio_layout_num_layers", 0, || {
        // SAFETY: forwarded from this function's contract.
        let l = unsafe { handle("fmio_layout_num_layers", "layout", layout) }?;
        Ok(l.layout.num_layers())
    })
}

/// Experts per layer of the layout (0 if `layout` is NULL). Any thread.
///
/// # Safety
/// `layout` must be NULL or a live layout.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_num_experts(layout: *const FmioLayout) -> u32 {
    ffi_value("fmio_layout_num_experts", 0, || {
        // SAFETY: forwarded from this function's contract.
        let l = unsafe { handle("fmio_layout_num_experts", "layout", layout) }?;
        Ok(l.layout.num_experts())
    })
}

/// The record of `(layer, expert)`. Any thread.
///
/// # Safety
/// `layout` must be a live layout; `out` valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_record(
    layout: *const FmioLayout,
    layer: u32,
    expert: u32,
    out: *mut FmioRecord,
) -> FmioStatus {
    const F: &str = "fmio_layout_record";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let l = unsafe { handle(F, "layout", layout) }?;
        need_out(F, "out", out)?;
        let loc = l
            .layout
            .get(ExpertKey::new(layer, expert))
            .map_err(|e| CallError::sched(F, &e))?;
        let rec = FmioRecord {
            file: loc.file,
            offset: loc.offset,
            len: loc.len,
            checksum: loc.checksum,
        };
        // SAFETY: as above.
        unsafe { write_out(F, "out", out, rec) }
    })
}

/// The path of file `index` of the layout, valid while the layout lives; NULL when out of
/// range or `layout` is NULL. Any thread.
///
/// # Safety
/// `layout` must be NULL or a live layout.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_file_path(
    layout: *const FmioLayout,
    index: u32,
) -> *const c_char {
    const F: &str = "fmio_layout_file_path";
    ffi_value(F, std::ptr::null(), || {
        // SAFETY: forwarded from this function's contract.
        let l = unsafe { handle(F, "layout", layout) }?;
        Ok(l.paths
            .get(index as usize)
            .map_or(std::ptr::null(), |c| c.as_ptr()))
    })
}

/// Starts describing a layout of `layers × experts` records. `*out` is freed by
/// `fmio_layout_builder_build` or `fmio_layout_builder_free`. Any thread.
///
/// # Safety
/// `out` must be valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_builder_new(
    layers: u32,
    experts: u32,
    out: *mut *mut FmioLayoutBuilder,
) -> FmioStatus {
    const F: &str = "fmio_layout_builder_new";
    ffi(F, || {
        need_out(F, "out", out)?;
        let records = layers as u64 * experts as u64;
        if records == 0 || records > FMIO_MAX_RECORDS {
            return Err(CallError::invalid(
                F,
                "layers/experts",
                format_args!("{layers} x {experts}: need 1 to {FMIO_MAX_RECORDS} records"),
            ));
        }
        let b = Box::into_raw(Box::new(FmioLayoutBuilder {
            inner: Some(LayoutBuilder::new(layers, experts)),
            layers,
            experts,
        }));
        // SAFETY: checked non-NULL; writable by the caller's promise.
        unsafe { write_out(F, "out", out, b) }
    })
}

/// Adds a file the records lie in; `*out_index` is its index for `fmio_layout_builder_set`.
/// One thread at a time per builder.
///
/// # Safety
/// `builder` must be a live builder; `path` a NUL-terminated string; `out_index` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_builder_add_file(
    builder: *mut FmioLayoutBuilder,
    path: *const c_char,
    out_index: *mut u32,
) -> FmioStatus {
    const F: &str = "fmio_layout_builder_add_file";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let b = unsafe { handle_mut(F, "builder", builder) }?;
        // SAFETY: as above.
        let path = unsafe { str_arg(F, "path", path) }?;
        need_out(F, "out_index", out_index)?;
        let inner = b.inner.as_mut().ok_or_else(|| built(F))?;
        let index = inner.add_file(path);
        // SAFETY: as above.
        unsafe { write_out(F, "out_index", out_index, index) }
    })
}

/// Sets the record of `(layer, expert)`: `len` payload bytes at `offset` of file `file`, with
/// its checksum. Checked when the layout is built. One thread at a time per builder.
///
/// # Safety
/// `builder` must be a live builder.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_builder_set(
    builder: *mut FmioLayoutBuilder,
    layer: u32,
    expert: u32,
    file: u32,
    offset: u64,
    len: u64,
    checksum: u64,
) -> FmioStatus {
    const F: &str = "fmio_layout_builder_set";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let b = unsafe { handle_mut(F, "builder", builder) }?;
        if layer >= b.layers || expert >= b.experts {
            return Err(CallError::new(
                FmioStatus::UnknownExpert,
                format!(
                    "{F}: no record slot for layer {layer} expert {expert} (the builder has {} layers x {} experts)",
                    b.layers, b.experts
                ),
            ));
        }
        let inner = b.inner.as_mut().ok_or_else(|| built(F))?;
        inner.set(ExpertKey::new(layer, expert), file, offset, len, checksum);
        Ok(())
    })
}

/// Validates the records (every one set, aligned, inside its file, no overlaps) and makes the
/// layout. The builder is used up either way: free it with `fmio_layout_builder_free`.
///
/// # Safety
/// `builder` must be a live builder; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_builder_build(
    builder: *mut FmioLayoutBuilder,
    out: *mut *mut FmioLayout,
) -> FmioStatus {
    const F: &str = "fmio_layout_builder_build";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let b = unsafe { handle_mut(F, "builder", builder) }?;
        need_out(F, "out", out)?;
        let inner = b.inner.take().ok_or_else(|| built(F))?;
        let layout = inner.build().map_err(|e| CallError::sched(F, &e))?;
        layout
            .validate_files()
            .map_err(|e| CallError::sched(F, &e))?;
        let boxed = Box::into_raw(Box::new(FmioLayout::new(layout)));
        // SAFETY: as above.
        unsafe { write_out(F, "out", out, boxed) }
    })
}

/// Frees a builder (NULL is ignored).
///
/// # Safety
/// `builder` must come from this library and not be freed already.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_layout_builder_free(builder: *mut FmioLayoutBuilder) {
    // SAFETY: forwarded from this function's contract.
    unsafe { flashmoe_capi_common::args::free_handle(builder) }
}

fn built(func: &str) -> CallError {
    CallError::invalid(func, "builder", "was already built (make a new one)")
}
