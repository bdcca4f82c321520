//! Progress bars of long commands (backup, restore, cluster snapshot save, check and load):
//! drawn on stderr when it is a terminal, nothing at all when it is not.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting bytes towards a known total.
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar for `what` (a short label) that ends at `total` bytes.
    pub fn bytes(what: &str, total: u64) -> Progress {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:12} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress(bar)
    }

    pub fn add(&self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Progress {
    /// The bar goes when the command is done with it, whether it succeeded or not.
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
