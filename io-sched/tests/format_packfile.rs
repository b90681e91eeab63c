//! The packed-experts file format v1: round trips, and every kind of damage named clearly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use io_sched::checksum::checksum;
use io_sched::packfile::{PackReader, PackSplit, PackWriter, verify, write_pack_set};
use io_sched::{Error, ExpertKey, ExpertLayout, Manifest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LAYERS: u32 = 3;
const EXPERTS: u32 = 5;

fn random_model(seed: u64) -> HashMap<ExpertKey, Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = HashMap::new();
    for layer in 0..LAYERS {
        for expert in 0..EXPERTS {
            // Sizes around and on the 4096 boundary.
            let len = match rng.random_range(0..4) {
                0 => 4096,
                1 => 1,
                _ => rng.random_range(1..20_000),
            };
            let mut v = vec![0u8; len];
            rng.fill(&mut v[..]);
            m.insert(ExpertKey::new(layer, expert), v);
        }
    }
    m
}

fn write_set(dir: &Path, split: PackSplit, model: &HashMap<ExpertKey, Vec<u8>>) -> ExpertLayout {
    let meta = serde_json::json!({"dtype": "q4", "dims": [8, 16]});
    write_pack_set(dir, LAYERS, EXPERTS, split, Some(&meta), |k, buf| {
        buf.extend_from_slice(&model[&k]);
        Ok(())
    })
    .unwrap()
}

fn check_bytes(layout: &ExpertLayout, model: &HashMap<ExpertKey, Vec<u8>>) {
    for (key, loc) in layout.iter() {
        let file = std::fs::read(layout.file_path(loc.file)).unwrap();
        let want = &model[&key];
        let at = loc.offset as usize;
        assert_eq!(loc.len as usize, want.len(), "{key:?}");
        assert_eq!(&file[at..at + want.len()], &want[..], "{key:?}");
        assert_eq!(loc.checksum, checksum(want), "{key:?}");
        assert!(
            file[at + want.len()..at + loc.read_len() as usize]
                .iter()
                .all(|&b| b == 0)
        );
    }
}

#[test]
fn round_trip_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model(1);
    let written = write_set(dir.path(), PackSplit::SingleFile, &model);
    let read = PackReader::open(dir.path().join("experts.fmoe"))
        .unwrap()
        .layout()
        .unwrap();
    assert_eq!(read, written);
    check_bytes(&read, &model);
    let mut calls = 0;
    verify(&read, |p| {
        calls += 1;
        assert_eq!(p.records_total, (LAYERS * EXPERTS) as u64);
    })
    .unwrap();
    assert_eq!(calls, LAYERS * EXPERTS);
    let (from_manifest, meta) = Manifest::load(dir.path().join("manifest.json")).unwrap();
    assert_eq!(from_manifest, written);
    assert_eq!(meta.unwrap()["dtype"], "q4");
    // Nothing but the finished files is left behind.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["experts.fmoe", "manifest.json"]);
}

#[test]
fn round_trip_one_file_per_layer() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model(2);
    let written = write_set(dir.path(), PackSplit::PerLayer, &model);
    assert_eq!(written.files().len(), LAYERS as usize);
    let paths: Vec<PathBuf> = (0..LAYERS)
        .map(|l| dir.path().join(format!("experts-layer-{l:04}.fmoe")))
        .collect();
    // Order of the files does not matter.
    let mut shuffled = paths.clone();
    shuffled.reverse();
    let read = PackReader::open_set(&shuffled).unwrap();
    check_bytes(&read, &model);
    verify(&read, |_| {}).unwrap();
    assert_eq!(
        Manifest::load(dir.path().join("manifest.json")).unwrap().0,
        written
    );
    // A set with a layer missing, or twice, is refused.
    let e = PackReader::open_set(&paths[..2]).unwrap_err().to_string();
    assert!(e.contains("hold 2 layers in all"), "{e}");
    let e = PackReader::open_set(&[&paths[0], &paths[1], &paths[1], &paths[2]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 1 is stored in both"), "{e}");
    // A single per-layer file is not a whole model.
    let e = PackReader::open(&paths[0])
        .unwrap()
        .layout()
        .unwrap_err()
        .to_string();
    assert!(e.contains("hold 1 layers in all"), "{e}");
}

#[test]
fn writer_accepts_any_order_and_refuses_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.fmoe");
    let mut w = PackWriter::create(&path, 1, 3).unwrap();
    w.append(ExpertKey::new(0, 2), b"two").unwrap();
    let e = w
        .append(ExpertKey::new(0, 2), b"again")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.fmoe") && e.contains("layer 0 expert 2") && e.contains("twice"),
        "{e}"
    );
    let e = w.append(ExpertKey::new(0, 1), b"").unwrap_err().to_string();
    assert!(e.contains("layer 0 expert 1") && e.contains("empty"), "{e}");
    let e = w
        .append(ExpertKey::new(1, 0), b"x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1 expert 0") && e.contains("outside"),
        "{e}"
    );
    w.append(ExpertKey::new(0, 0), b"zero").unwrap();
    // Missing key: finish fails and leaves neither the final file nor the temporary one.
    let e = w.finish().unwrap_err().to_string();
    assert!(
        e.contains("x.fmoe") && e.contains("layer 0 expert 1"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn unfinished_writer_never_leaves_a_complete_looking_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.fmoe");
    let mut w = PackWriter::create(&path, 1, 1).unwrap();
    w.append(ExpertKey::new(0, 0), &[1u8; 10_000]).unwrap();
    assert!(!path.exists(), "final name must not exist before finish");
    drop(w); // e.g. the packer crashed or returned early
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A small valid file: 1 layer x 2 experts, returned with its bytes.
fn small_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("small.fmoe");
    let mut w = PackWriter::create(&path, 1, 2).unwrap();
    w.append(ExpertKey::new(0, 0), &[0xAA; 5000]).unwrap();
    w.append(ExpertKey::new(0, 1), &[0xBB; 100]).unwrap();
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn open_err(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    let e = PackReader::open(path).unwrap_err();
    assert!(matches!(e, Error::Layout(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&path.display().to_string()),
        "error must name the file: {e}"
    );
    e
}

#[test]
fn truncation_and_flipped_bytes_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, good) = small_file(dir.path());
    assert_eq!(good.len(), 4096 + 8192 + 4096 + 64);

    let e = open_err(&path, &good[..good.len() - 1]);
    assert!(e.contains("truncated"), "{e}");
    let e = open_err(&path, &good[..100]);
    assert!(e.contains("truncated") && e.contains("header"), "{e}");
    let mut longer = good.clone();
    longer.push(0);
    let e = open_err(&path, &longer);
    assert!(e.contains("trailing"), "{e}");

    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(open_err(&path, &bad).contains("magic"));
    let mut bad = good.clone();
    bad[20] ^= 1; // experts
    let e = open_err(&path, &bad);
    assert!(e.contains("header checksum mismatch"), "{e}");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 40] ^= 0x10; // inside the table
    let e = open_err(&path, &bad);
    assert!(e.contains("record table checksum mismatch"), "{e}");

    // A flipped payload byte passes open (records are not read) but not verify.
    let mut bad = good.clone();
    bad[4096 + 8192 + 7] ^= 1; // expert 1's payload
    std::fs::write(&path, &bad).unwrap();
    let layout = PackReader::open(&path).unwrap().layout().unwrap();
    match verify(&layout, |_| {}) {
        Err(Error::Checksum { site, .. }) => {
            assert_eq!((site.layer, site.expert, site.offset), (0, 1, 4096 + 8192));
            assert_eq!(site.file, path);
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

/// Builds a file by hand from the documented byte layout, with correct checksums, so that the
/// reader's semantic checks (not only its checksums) are exercised.
struct Craft {
    layers: u32,
    experts: u32,
    first_layer: u32,
    layer_count: u32,
    record_count: u64,
    table_offset: u64,
    table_len: Option<u64>,
    entries: Vec<(u32, u32, u64, u64)>,
}

impl Craft {
    fn new(experts: u32, entries: Vec<(u32, u32, u64, u64)>) -> Self {
        Craft {
            layers: 1,
            experts,
            first_layer: 0,
            layer_count: 1,
            record_count: experts as u64,
            table_offset: 4096 * 4,
            table_len: None,
            entries,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut table = Vec::new();
        for &(l, e, off, len) in &self.entries {
            table.extend_from_slice(&l.to_le_bytes());
            table.extend_from_slice(&e.to_le_bytes());
            table.extend_from_slice(&off.to_le_bytes());
            table.extend_from_slice(&len.to_le_bytes());
            table.extend_from_slice(&0u64.to_le_bytes());
        }
        let mut h = vec![0u8; 4096];
        h[0..8].copy_from_slice(b"FMOEXPT1");
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..16].copy_from_slice(&4096u32.to_le_bytes());
        h[16..20].copy_from_slice(&self.layers.to_le_bytes());
        h[20..24].copy_from_slice(&self.experts.to_le_bytes());
        h[24..28].copy_from_slice(&self.first_layer.to_le_bytes());
        h[28..32].copy_from_slice(&self.layer_count.to_le_bytes());
        h[32..40].copy_from_slice(&self.record_count.to_le_bytes());
        h[40..48].copy_from_slice(&self.table_offset.to_le_bytes());
        let table_len = self.table_len.unwrap_or(table.len() as u64);
        h[48..56].copy_from_slice(&table_len.to_le_bytes());
        h[56..64].copy_from_slice(&checksum(&table).to_le_bytes());
        let sum = checksum(&h[..4088]);
        h[4088..].copy_from_slice(&sum.to_le_bytes());
        let mut f = h;
        f.resize(self.table_offset.min(1 << 20) as usize, 0);
        f.extend_from_slice(&table);
        f
    }
}

#[test]
fn crafted_files_with_bad_tables_name_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.fmoe");
    let ok = Craft::new(2, vec![(0, 0, 4096, 100), (0, 1, 8192, 8192)]);
    std::fs::write(&path, ok.bytes()).unwrap();
    let layout = PackReader::open(&path).unwrap().layout().unwrap();
    assert_eq!(layout.get(ExpertKey::new(0, 1)).unwrap().offset, 8192);

    let cases: Vec<(Craft, &[&str])> = vec![
        (
            Craft::new(2, vec![(0, 1, 4096, 100), (0, 1, 8192, 100)]),
            &[
                "entry 1 (layer 0 expert 1)",
                "duplicate of record table entry 0",
            ],
        ),
        (
            Craft::new(2, vec![(0, 0, 4096, 0), (0, 1, 8192, 100)]),
            &["entry 0 (layer 0 expert 0)", "length is 0"],
        ),
        (
            Craft::new(2, vec![(0, 0, 4096, 100), (0, 5, 8192, 100)]),
            &["entry 1 (layer 0 expert 5)", "outside"],
        ),
        (
            Craft::new(2, vec![(0, 0, 4096, 100), (0, 1, 8200, 100)]),
            &["entry 1 (layer 0 expert 1)", "offset 8200"],
        ),
        (
            Craft::new(2, vec![(0, 0, 4096, 100), (0, 1, 0, 100)]),
            &["entry 1 (layer 0 expert 1)", "after the header"],
        ),
        (
            Craft::new(2, vec![(0, 0, 4096, 100), (0, 1, 8192, 8193)]),
            &["entry 1 (layer 0 expert 1)", "runs past the record table"],
        ),
        (
            Craft::new(2, vec![(0, 0, 4096, 100), (0, 1, 12288, u64::MAX)]),
            &["entry 1 (layer 0 expert 1)", "runs past the record table"],
        ),
        (
            Craft::new(2, vec![(0, 0, 4096, 5000), (0, 1, 8192, 100)]),
            &[
                "entry 0 (layer 0 expert 0)",
                "overlaps entry 1 (layer 0 expert 1)",
            ],
        ),
        (
            // Missing key: only one of two records.
            Craft::new(2, vec![(0, 0, 4096, 100)]),
            &["record table length 32 is not 2 records"],
        ),
    ];
    for (craft, needles) in cases {
        let e = open_err(&path, &craft.bytes());
        for n in needles {
            assert!(e.contains(n), "expected {n:?} in: {e}");
        }
    }
}

#[test]
fn huge_counts_in_a_tiny_file_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.fmoe");
    let mut c = Craft::new(2, vec![]);
    c.layers = u32::MAX;
    c.experts = u32::MAX;
    c.layer_count = u32::MAX;
    c.record_count = u32::MAX as u64 * u32::MAX as u64;
    c.table_len = Some(c.record_count.wrapping_mul(32));
    let e = open_err(&path, &c.bytes());
    assert!(e.contains("more than the 16777216 accepted"), "{e}");

    // Consistent counts (16 Mi records, 512 MiB of table) but a tiny file.
    c.layers = 1 << 12;
    c.layer_count = 1 << 12;
    c.experts = 1 << 12;
    c.record_count = 1 << 24;
    c.table_len = Some(32 << 24);
    let e = open_err(&path, &c.bytes());
    assert!(e.contains("truncated"), "{e}");

    // Table length matches the file, but the record count cannot fit between header and table.
    let mut c = Craft::new(
        4,
        vec![
            (0, 0, 4096, 1),
            (0, 1, 8192, 1),
            (0, 2, 12288, 1),
            (0, 3, 12288, 1),
        ],
    );
    c.table_offset = 8192;
    let e = open_err(&path, &c.bytes());
    assert!(e.contains("cannot fit"), "{e}");

    // A one-layer file of a model claiming 4 billion layers opens, but is no whole model, and
    // saying so must not allocate per claimed layer.
    let mut c = Craft::new(2, vec![(0, 0, 4096, 100), (0, 1, 8192, 100)]);
    c.layers = u32::MAX;
    std::fs::write(&path, c.bytes()).unwrap();
    let e = PackReader::open(&path)
        .unwrap()
        .layout()
        .unwrap_err()
        .to_string();
    assert!(e.contains("hold 1 layers in all"), "{e}");

    // Nonsense shape fields.
    let mut c = Craft::new(2, vec![(0, 0, 4096, 100), (0, 1, 8192, 100)]);
    c.first_layer = 1;
    assert!(open_err(&path, &c.bytes()).contains("layers 1..2"));
}
