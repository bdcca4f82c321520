//! The fuzzers' corpora (`fuzz/corpus/<target>/`, seeds and the inputs the fuzzers kept) as
//! regression tests on stable Rust: every input goes through its target again.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in tests::fuzz::TARGETS {
        let dir = root.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
        for p in inputs {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let ran = std::panic::catch_unwind(|| target(&data));
            assert!(ran.is_ok(), "{name}: {} fails", p.display());
        }
    }
}
