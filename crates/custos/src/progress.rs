//! Progress bars on a terminal (hidden automatically when stderr is not one).

use custos_broker::IngestProgress;
use indicatif::{ProgressBar, ProgressStyle};

/// An ingest progress bar over the input's bytes.
pub struct IngestBar {
    bar: ProgressBar,
}

impl IngestBar {
    /// A bar labelled with the file being ingested.
    pub fn new(label: &str) -> Self {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        Self { bar }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl IngestProgress for IngestBar {
    fn start(&self, total_bytes: u64) {
        self.bar.set_length(total_bytes);
    }

    fn advance_to(&self, bytes_read: u64) {
        self.bar.set_position(bytes_read);
    }
}

/// A counting spinner for work measured in rows.
pub fn rows_bar(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {human_pos}/{human_len} rows ({eta} left)",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}
