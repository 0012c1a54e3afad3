//! Progress output on stderr (the results go to stdout and the JSON file).

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar for a counted step.
pub(crate) fn bar(message: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec})",
        )
        .expect("the progress template is valid"),
    );
    bar.set_message(message.to_string());
    bar
}

/// Announces a step.
pub(crate) fn step(message: &str) {
    eprintln!("==> {message}");
}
