//! Running one job: a script through its interpreter or a command line through the shell, with
//! its timeout, its output captured up to a cap, and its whole process group killed at the
//! timeout.

use std::process::Stdio;
use std::time::{Duration, Instant};

use logbook_proto::agent::v1 as pb;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// What came out of a run.
#[derive(Debug, Clone)]
pub struct Ran {
    /// How it ended.
    pub outcome: pb::JobOutcome,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Whether stdout was cut.
    pub stdout_truncated: bool,
    /// Whether stderr was cut.
    pub stderr_truncated: bool,
    /// How long it ran.
    pub duration: Duration,
    /// Why it failed without an exit code.
    pub error: Option<String>,
}

impl Ran {
    /// The result message for `job_id`.
    pub fn report(&self, job_id: &str) -> pb::JobResultReport {
        pb::JobResultReport {
            job_id: job_id.to_string(),
            outcome: self.outcome as i32,
            has_exit_code: self.exit_code.is_some(),
            exit_code: self.exit_code.unwrap_or_default(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
            duration_ms: self.duration.as_millis() as u64,
            finished_at_unix_ms: crate::collector::now_unix_ms(),
            error: self.error.clone().unwrap_or_default(),
        }
    }

    /// A run that never started (or cannot be known to have finished).
    pub fn failed_without_running(error: impl Into<String>) -> Self {
        Self {
            outcome: pb::JobOutcome::Failed,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: Duration::ZERO,
            error: Some(error.into()),
        }
    }
}

fn interpreter_program(interpreter: i32) -> Option<(&'static str, &'static str)> {
    match pb::Interpreter::try_from(interpreter).ok()? {
        pb::Interpreter::Sh => Some(("sh", "sh")),
        pb::Interpreter::Bash => Some(("bash", "sh")),
        pb::Interpreter::Python3 => Some(("python3", "py")),
        pb::Interpreter::Pwsh => Some(("pwsh", "ps1")),
        pb::Interpreter::Unspecified => None,
    }
}

/// Runs `job`, writing a script (if any) under `scratch`. `output_cap` bounds each stream.
pub async fn run(job: &pb::JobDispatch, scratch: &std::path::Path, output_cap: usize) -> Ran {
    let timeout = Duration::from_secs(u64::from(job.timeout_secs.max(1)));
    let mut script_file = None;
    let mut command = match &job.spec {
        Some(pb::job_dispatch::Spec::Script(script)) => {
            let Some((program, extension)) = interpreter_program(script.interpreter) else {
                return Ran::failed_without_running("unknown interpreter");
            };
            let path = scratch.join(format!("{}.{extension}", job.job_id));
            if let Err(e) = write_script(&path, &script.body) {
                return Ran::failed_without_running(format!("could not write the script: {e}"));
            }
            let mut command = Command::new(program);
            command.arg(&path).args(&script.args).envs(&script.env);
            script_file = Some(path);
            command
        }
        Some(pb::job_dispatch::Spec::Command(line)) => {
            // The POSIX shell by its fixed path: no search through PATH for every job.
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(&line.command_line);
            command
        }
        None => return Ran::failed_without_running("the job has no script or command"),
    };
    if !job.working_dir.is_empty() {
        command.current_dir(&job.working_dir);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            remove(script_file);
            return Ran::failed_without_running(format!("could not start: {e}"));
        }
    };
    let stdout = tokio::spawn(capture(child.stdout.take(), output_cap));
    let stderr = tokio::spawn(capture(child.stderr.take(), output_cap));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let (outcome, exit_code, error) = match waited {
        Ok(Ok(status)) => match status.code() {
            Some(0) => (pb::JobOutcome::Succeeded, Some(0), None),
            Some(code) => (pb::JobOutcome::Failed, Some(code), None),
            None => (
                pb::JobOutcome::Failed,
                None,
                Some(format!("killed: {status}")),
            ),
        },
        Ok(Err(e)) => (
            pb::JobOutcome::Failed,
            None,
            Some(format!("could not wait for it: {e}")),
        ),
        Err(_) => {
            kill_group(&mut child).await;
            (
                pb::JobOutcome::TimedOut,
                None,
                Some(format!(
                    "killed after its timeout of {}s",
                    timeout.as_secs()
                )),
            )
        }
    };
    let duration = started.elapsed();
    let (stdout, stdout_truncated) = stdout.await.unwrap_or_default();
    let (stderr, stderr_truncated) = stderr.await.unwrap_or_default();
    remove(script_file);
    Ran {
        outcome,
        exit_code,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        duration,
        error,
    }
}

fn write_script(path: &std::path::Path, body: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o700);
    // Not fsynced: the file only lives while the job runs, and a job is never run again after
    // a crash.
    options.open(path)?.write_all(body.as_bytes())
}

fn remove(path: Option<std::path::PathBuf>) {
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

async fn kill_group(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // The job may have started children of its own; they all go with its process group.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{pid}"))
            .status()
            .await;
    }
    let _ = child.kill().await;
}

/// Reads a stream to its end, keeping at most `cap` bytes.
async fn capture<R: AsyncRead + Unpin>(stream: Option<R>, cap: usize) -> (String, bool) {
    let Some(mut stream) = stream else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
    let truncated = total > cap;
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if truncated {
        text.push_str(&format!(
            "\n[output truncated by logbook-agent: {total} bytes, the first {cap} kept]\n"
        ));
    }
    (text, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: pb::job_dispatch::Spec, timeout_secs: u32) -> pb::JobDispatch {
        pb::JobDispatch {
            job_id: uuid::Uuid::new_v4().to_string(),
            timeout_secs,
            spec: Some(spec),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_script_runs_with_its_arguments_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = pb::Script {
            interpreter: pb::Interpreter::Sh as i32,
            body: "echo \"$1 $GREETING\"; echo oops >&2; exit 3".into(),
            args: vec!["hello".into()],
            env: [("GREETING".to_string(), "world".to_string())]
                .into_iter()
                .collect(),
        };
        let ran = run(
            &job(pb::job_dispatch::Spec::Script(script), 10),
            dir.path(),
            1024,
        )
        .await;
        assert_eq!(ran.outcome, pb::JobOutcome::Failed);
        assert_eq!(ran.exit_code, Some(3));
        assert_eq!(ran.stdout, "hello world\n");
        assert_eq!(ran.stderr, "oops\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the script file is removed"
        );
    }

    #[tokio::test]
    async fn output_beyond_the_cap_is_cut_with_a_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line = pb::CommandLine {
            command_line: "head -c 5000 /dev/zero | tr '\\0' x".into(),
        };
        let ran = run(
            &job(pb::job_dispatch::Spec::Command(line), 10),
            dir.path(),
            100,
        )
        .await;
        assert_eq!(ran.outcome, pb::JobOutcome::Succeeded);
        assert!(ran.stdout_truncated);
        assert!(ran.stdout.starts_with(&"x".repeat(100)));
        assert!(ran.stdout.contains("truncated"));
    }

    #[tokio::test]
    async fn a_job_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line = pb::CommandLine {
            command_line: "sleep 30 & sleep 30".into(),
        };
        let started = Instant::now();
        let ran = run(
            &job(pb::job_dispatch::Spec::Command(line), 1),
            dir.path(),
            100,
        )
        .await;
        assert_eq!(ran.outcome, pb::JobOutcome::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run waited for orphaned children"
        );
    }

    #[tokio::test]
    async fn a_missing_interpreter_fails_without_an_exit_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = pb::Script {
            interpreter: pb::Interpreter::Sh as i32,
            body: "true".into(),
            ..Default::default()
        };
        let mut missing = job(pb::job_dispatch::Spec::Script(script), 5);
        missing.working_dir = "/nonexistent/directory".into();
        let ran = run(&missing, dir.path(), 100).await;
        assert_eq!(ran.outcome, pb::JobOutcome::Failed);
        assert_eq!(ran.exit_code, None);
        assert!(ran.error.is_some());
    }
}
