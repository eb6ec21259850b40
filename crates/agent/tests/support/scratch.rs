//! A per-test scratch directory (configurations, kubeconfigs, lock files),
//! removed on drop, panics included.

use std::path::PathBuf;

/// A scratch directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// `<tmp>/cplb-test-<pid>-<name>`, emptied first.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cplb-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A file inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
