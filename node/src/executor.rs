//! Runs models locally with tract-onnx, from a content-addressed model store.
//!
//! Models live in `<data dir>/models/<blake3 hex>.onnx`; a file whose blake3 is not its name
//! is refused. A loaded plan is cached per model. One task runs on one thread (the caller runs
//! it in `spawn_blocking` under a slot semaphore), so a node's CPU use is `slots` cores.
//!
//! Input bytes are the model's single input tensor as little-endian f32. The output bytes are
//! a CBOR [`ModelOutput`]: dtype, shape, raw little-endian data, and the argmax for
//! classifiers. Integer outputs (the default model's int8 logits) are bit-identical on every
//! SIMD path tract can take, which is what lets k workers agree on one blake3 digest.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleetmesh_crypto::ModelId;
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// Why a model could not be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// This node does not hold the model.
    #[error("model {0} is not in the model store")]
    ModelMissing(ModelId),
    /// The model file failed to load or optimize.
    #[error("model {model} failed to load: {message}")]
    Load {
        /// The model.
        model: ModelId,
        /// tract's message.
        message: String,
    },
    /// The input does not fit the model's input tensor.
    #[error("input of {got} bytes does not match the model input ({expected} bytes of f32)")]
    BadInput {
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// Inference failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// The model store directory could not be used.
    #[error("model store {path}: {message}")]
    Store {
        /// The directory or file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

pub use fleetmesh_protocol::output::ModelOutput;

/// One finished inference.
#[derive(Debug, Clone)]
pub struct Inference {
    /// The canonical output bytes.
    pub output: Vec<u8>,
    /// Wall time inside tract, microseconds.
    pub run_time_us: u64,
}

/// The content-addressed model store plus a cache of loaded plans.
pub struct ModelStore {
    dir: PathBuf,
    /// Models held: read from the directory once, then kept by `install`, so the hot paths
    /// (every announcement, presence advert and DHT scan) never touch the disk.
    held: Mutex<BTreeSet<ModelId>>,
    plans: Mutex<HashMap<ModelId, (Plan, usize)>>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl ModelStore {
    /// Opens `dir` (creating it) and installs the embedded default model.
    pub fn open(dir: &Path) -> Result<Self, ExecError> {
        avoid_amx_kernels();
        std::fs::create_dir_all(dir)
            .map_err(|e| ExecError::Store { path: dir.to_owned(), message: e.to_string() })?;
        let held = std::fs::read_dir(dir)
            .map_err(|e| ExecError::Store { path: dir.to_owned(), message: e.to_string() })?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".onnx")?.parse().ok())
            .collect();
        let store = Self { dir: dir.to_owned(), held: Mutex::new(held), plans: Mutex::new(HashMap::new()) };
        store.install(crate::digits::MODEL_ONNX)?;
        Ok(store)
    }

    fn path_of(&self, model: &ModelId) -> PathBuf {
        self.dir.join(format!("{model}.onnx"))
    }

    /// Adds a model file; returns its id. Installing a model twice is harmless.
    pub fn install(&self, bytes: &[u8]) -> Result<ModelId, ExecError> {
        let id = ModelId::of(bytes);
        let path = self.path_of(&id);
        if !path.exists() {
            // Written, synced, renamed, and the directory synced: after a power cut the model
            // is either whole under its name or absent (and it is hashed again when loaded).
            let tmp = path.with_extension("tmp");
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(&self.dir)?.sync_all()
            };
            write().map_err(|e| ExecError::Store { path: path.clone(), message: e.to_string() })?;
        }
        if let Ok(mut held) = self.held.lock() {
            held.insert(id);
        }
        Ok(id)
    }

    /// Whether this node holds `model`.
    pub fn has(&self, model: &ModelId) -> bool {
        self.held.lock().is_ok_and(|h| h.contains(model))
    }

    /// Every model held, sorted.
    pub fn list(&self) -> Vec<ModelId> {
        self.held.lock().map(|h| h.iter().copied().collect()).unwrap_or_default()
    }

    fn plan(&self, model: &ModelId) -> Result<(Plan, usize), ExecError> {
        if let Some(p) = self.plans.lock().ok().and_then(|m| m.get(model).cloned()) {
            return Ok(p);
        }
        let path = self.path_of(model);
        let bytes = std::fs::read(&path).map_err(|_| ExecError::ModelMissing(*model))?;
        if ModelId::of(&bytes) != *model {
            return Err(ExecError::Load {
                model: *model,
                message: "file content does not match its blake3 name".into(),
            });
        }
        let load = |m: String| ExecError::Load { model: *model, message: m };
        let typed = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.into_optimized())
            .map_err(|e| load(e.to_string()))?;
        let input_fact = typed.input_fact(0).map_err(|e| load(e.to_string()))?;
        let elems = input_fact
            .shape
            .as_concrete()
            .map(|s| s.iter().product::<usize>())
            .ok_or_else(|| load("model input shape is not fixed".into()))?;
        let plan = typed.into_runnable().map_err(|e| load(e.to_string()))?;
        if let Ok(mut m) = self.plans.lock() {
            m.insert(*model, (plan.clone(), elems));
        }
        Ok((plan, elems))
    }

    /// The size in bytes of `model`'s input (its input tensor as little-endian f32); loads and
    /// caches the model's plan.
    pub fn input_bytes(&self, model: &ModelId) -> Result<u64, ExecError> {
        let (_, elems) = self.plan(model)?;
        Ok((elems as u64).saturating_mul(4))
    }

    /// The most bytes `model`'s encoded output can take: one run on an all-zero input, plus
    /// 4 bytes, because the encoding ends with the argmax (0 on an all-zero input, one byte;
    /// up to five for a large class index). Assumes the output's shape does not depend on
    /// the input's values, as for classifiers; a model whose output grows with its input
    /// (detection, sequences) would need its size declared instead.
    pub fn output_bytes(&self, model: &ModelId) -> Result<u64, ExecError> {
        let (_, elems) = self.plan(model)?;
        let out = self.run(model, &vec![0u8; elems.saturating_mul(4)])?;
        Ok((out.output.len() as u64).saturating_add(4))
    }

    /// Runs `model` once on an all-zero input: whether the runtime works on this machine.
    pub fn self_test(&self, model: &ModelId) -> Result<(), ExecError> {
        let (_, elems) = self.plan(model)?;
        self.run(model, &vec![0u8; elems.saturating_mul(4)]).map(|_| ())
    }

    /// Runs `model` on `input` on the calling thread (blocking).
    pub fn run(&self, model: &ModelId, input: &[u8]) -> Result<Inference, ExecError> {
        let (plan, elems) = self.plan(model)?;
        if input.len() != elems * 4 {
            return Err(ExecError::BadInput { got: input.len(), expected: elems * 4 });
        }
        let values: Vec<f32> =
            input.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let shape: Vec<usize> = plan
            .model()
            .input_fact(0)
            .ok()
            .and_then(|f| f.shape.as_concrete().map(|s| s.to_vec()))
            .unwrap_or_else(|| vec![elems]);
        let tensor = Tensor::from_shape(&shape, &values).map_err(|e| ExecError::Run(e.to_string()))?;
        let start = Instant::now();
        let outputs = plan.run(tvec!(tensor.into())).map_err(|e| ExecError::Run(e.to_string()))?;
        let run_time_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let out = outputs.first().ok_or_else(|| ExecError::Run("model produced no output".into()))?;
        Ok(Inference { output: canonical_output(out)?.to_bytes(), run_time_us })
    }

    /// Runs `model` on a task's input: once, or for a batch ([`fleetmesh_protocol::batch`])
    /// on each of its inputs in turn, the outputs as one list. Run time is the sum. A batch
    /// stops between inputs once `late()` says its deadline passed (nobody takes the result).
    pub fn run_batch(
        &self,
        model: &ModelId,
        batch: Option<u16>,
        input: &[u8],
        late: &dyn Fn() -> bool,
    ) -> Result<Inference, ExecError> {
        if batch.is_none() {
            return self.run(model, input);
        }
        let parts = fleetmesh_protocol::batch::split_input(batch, input)
            .map_err(|e| ExecError::Run(format!("the batch's input: {e}")))?;
        let (mut outputs, mut run_time_us) = (Vec::with_capacity(parts.len()), 0u64);
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            if late() {
                return Err(ExecError::Run(format!(
                    "the batch's deadline passed after {i} of its {n} inputs"
                )));
            }
            let one =
                self.run(model, part).map_err(|e| ExecError::Run(format!("input {i} of the batch: {e}")))?;
            run_time_us = run_time_us.saturating_add(one.run_time_us);
            outputs.push(one.output);
        }
        Ok(Inference { output: fleetmesh_protocol::batch::encode_outputs(&outputs), run_time_us })
    }
}

fn canonical_output(t: &Tensor) -> Result<ModelOutput, ExecError> {
    let shape = t.shape().iter().map(|&d| d as u64).collect();
    let run = |e: TractError| ExecError::Run(e.to_string());
    let plain = t.try_as_plain_ram().map_err(run)?;
    let (dtype, data, argmax) = match t.datum_type() {
        DatumType::I8 => {
            let v = plain.as_slice::<i8>().map_err(run)?;
            ("i8", v.iter().map(|&x| x as u8).collect(), argmax(v))
        }
        DatumType::U8 => {
            let v = plain.as_slice::<u8>().map_err(run)?;
            ("u8", v.to_vec(), argmax(v))
        }
        DatumType::I32 => {
            let v = plain.as_slice::<i32>().map_err(run)?;
            ("i32", v.iter().flat_map(|x| x.to_le_bytes()).collect(), argmax(v))
        }
        DatumType::F32 => {
            let v = plain.as_slice::<f32>().map_err(run)?;
            let idx = v.iter().enumerate().fold(None, |best: Option<(usize, f32)>, (i, &x)| match best {
                Some((_, b)) if x <= b => best,
                _ if x.is_nan() => best,
                _ => Some((i, x)),
            });
            ("f32", v.iter().flat_map(|x| x.to_le_bytes()).collect(), idx.map(|(i, _)| i as u32))
        }
        other => return Err(ExecError::Run(format!("unsupported output type {other:?}"))),
    };
    Ok(ModelOutput { dtype: dtype.into(), shape, data, argmax })
}

/// Index of the largest element; the lowest index wins ties.
fn argmax<T: PartialOrd + Copy>(v: &[T]) -> Option<u32> {
    let mut best: Option<(usize, T)> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// Takes Intel AMX out of the instruction sets tract dispatches to, before it first looks.
///
/// tract 0.23.9's AMX int8 matrix kernel (`avx512amx_mmm_i32_16x16`) crashed the process with
/// SIGSEGV at a tile load under concurrent inference on an AMX host (Xeon with amx_int8;
/// `fleetmesh bench throughput`, every run within seconds); with AMX taken out the same run
/// went through at about 800 tasks/s. The kernels below it (AVX-512 VNNI and down) give the
/// same integer logits (the digits test checks it). A `TRACT_CPU_ISA` the user set is kept,
/// with AMX taken out of it too. Called before every model load and ISA report.
fn avoid_amx_kernels() {
    #[cfg(target_arch = "x86_64")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let amx_off = "-amx-int8,-amx-bf16";
            let spec = match std::env::var("TRACT_CPU_ISA") {
                Ok(user) if !user.trim().is_empty() => format!("{user},{amx_off}"),
                _ => amx_off.to_owned(),
            };
            tract_onnx::prelude::tract_linalg::knobs::TRACT_CPU_ISA.set(Some(spec));
        });
    }
}

/// The engine and instruction-set path, for result headers.
pub fn runtime_profile() -> fleetmesh_protocol::RuntimeProfile {
    avoid_amx_kernels();
    fleetmesh_protocol::RuntimeProfile {
        engine: "tract-onnx 0.23.9".into(),
        isa: format!("{:?}", tract_onnx::prelude::tract_linalg::isa::native()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_lowest_index_wins_ties() {
        assert_eq!(argmax(&[1i8, 5, 5, 2]), Some(1));
        assert_eq!(argmax::<i8>(&[]), None);
    }

    #[test]
    fn digits_model_matches_onnxruntime_on_the_test_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let model = crate::digits::model_id();
        let mut correct = 0;
        let mut logits_equal = 0;
        let set = crate::digits::test_set();
        for s in &set {
            let inf = store.run(&model, &s.to_input()).unwrap();
            let out = ModelOutput::from_bytes(&inf.output).unwrap();
            assert_eq!(out.shape, vec![1, 10]);
            let logits = out.as_i8().unwrap();
            if logits == s.reference_logits {
                logits_equal += 1;
            }
            if out.argmax == Some(u32::from(s.label)) {
                correct += 1;
            }
        }
        // Under TRACT_CPU_ISA=-avx2,... (CI runs this test both ways) tract must really be on
        // another kernel path, and must still agree bit for bit.
        let isa = runtime_profile().isa;
        if let Ok(spec) = std::env::var("TRACT_CPU_ISA") {
            for removed in spec.split(',').filter_map(|t| t.trim().strip_prefix('-')) {
                assert!(!isa.split(',').any(|f| f == removed), "{removed} still in use: {isa}");
            }
        }
        // AMX is never dispatched to (its kernel crashed under load), whatever TRACT_CPU_ISA
        // says besides.
        assert!(!isa.contains("amx"), "AMX still in use: {isa}");
        // The recipe measured 438/450 with onnxruntime; tract must reproduce its integer logits.
        assert_eq!(logits_equal, set.len(), "tract and onnxruntime disagree on integer logits");
        assert_eq!(correct, 438);
    }

    #[test]
    fn a_batch_runs_each_input_in_order_and_stops_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let model = crate::digits::model_id();
        let set = crate::digits::test_set();
        let input: Vec<u8> = set[..4].iter().flat_map(|s| s.to_input()).collect();
        let out = store.run_batch(&model, Some(4), &input, &|| false).unwrap();
        let outputs = fleetmesh_protocol::batch::decode_outputs(4, &out.output).unwrap();
        for (i, o) in outputs.iter().enumerate() {
            assert_eq!(o.as_slice(), store.run(&model, &set[i].to_input()).unwrap().output, "input {i}");
        }
        // Without a batch: one run, its output as is.
        let one = store.run_batch(&model, None, &set[0].to_input(), &|| false).unwrap();
        assert_eq!(one.output, store.run(&model, &set[0].to_input()).unwrap().output);
        // Its deadline passes after two inputs: it stops there, saying so.
        let calls = std::cell::Cell::new(0);
        let late = || {
            calls.set(calls.get() + 1);
            calls.get() > 2
        };
        match store.run_batch(&model, Some(4), &input, &late) {
            Err(ExecError::Run(m)) => assert!(m.contains("after 2 of its 4"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(store.run_batch(&model, Some(3), &input, &|| false), Err(ExecError::Run(_))),
            "uneven"
        );
    }

    #[test]
    fn bad_input_and_missing_model_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let model = crate::digits::model_id();
        assert!(matches!(store.run(&model, &[0u8; 10]), Err(ExecError::BadInput { got: 10, expected: 256 })));
        assert!(matches!(store.run(&ModelId::of(b"nope"), &[]), Err(ExecError::ModelMissing(_))));
        assert_eq!(store.list(), vec![model]);
    }

    #[test]
    fn tampered_model_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let model = crate::digits::model_id();
        std::fs::write(dir.path().join(format!("{model}.onnx")), b"garbage").unwrap();
        assert!(matches!(store.run(&model, &[0u8; 256]), Err(ExecError::Load { .. })));
    }
}
