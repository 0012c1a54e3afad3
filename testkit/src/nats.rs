//! A private nats-server with JetStream for one test: for tests that restart it, stop it or run
//! it with authentication. It listens on a free loopback port and is killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HINT: &str = "tests need nats-server (with JetStream) on PATH or at /usr/sbin/nats-server; \
                    install it with `ops/dev/services.sh`";

/// A running nats-server child process.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra_args: Vec<String>,
    config_mode: bool,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("port", &self.port)
            .finish()
    }
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("LOGBOOK_TEST_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nats-server")
    }
}

impl NatsServer {
    /// Starts a server with JetStream and no authentication.
    pub fn start() -> Self {
        Self::start_with_args(Vec::new())
    }

    /// Starts a server from a configuration file, which must enable JetStream itself (with a
    /// store directory of the test's own).
    pub fn start_with_config(config: &std::path::Path) -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            child: None,
            port: 0,
            store,
            extra_args: vec!["-c".into(), config.display().to_string()],
            config_mode: true,
        };
        server.spawn(0);
        server
    }

    /// Starts a server with extra command-line arguments.
    pub fn start_with_args(extra_args: Vec<String>) -> Self {
        let store = tempfile::tempdir().expect("temp dir for JetStream");
        let mut server = Self {
            child: None,
            port: 0,
            store,
            extra_args,
            config_mode: false,
        };
        server.spawn(0);
        server
    }

    fn spawn(&mut self, port: u16) {
        let port_arg = if port == 0 {
            "-1".to_string()
        } else {
            port.to_string()
        };
        let mut command = Command::new(binary());
        command.args(["-a", "127.0.0.1", "-p", &port_arg]);
        if !self.config_mode {
            command.arg("-js").arg("-sd").arg(self.store.path());
        }
        let mut child = command
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}. {HINT}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = output.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut seen) = seen.lock()
                    && seen.len() < 50
                {
                    seen.push(line.clone());
                }
                if !sent
                    && let Some(rest) = line.split("Listening for client connections on ").nth(1)
                {
                    let port = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                    let _ = tx.send(port);
                    sent = true;
                }
                // Keep draining so the server never blocks on a full pipe.
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(port) => break port,
                Err(_) if Instant::now() > deadline => break None,
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        let said = output.lock().map(|o| o.join("\n")).unwrap_or_default();
                        panic!("nats-server exited at start-up with {status}:\n{said}\n{HINT}");
                    }
                }
            }
        };
        let Some(found) = found else {
            let _ = child.kill();
            panic!("nats-server did not report its port within 10 s. {HINT}");
        };
        self.port = found;
        self.child = Some(child);
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        // The port may take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
