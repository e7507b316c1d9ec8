//! A Ballista cluster of this crate's binaries on 127.0.0.1, for the tests and the bench.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;

/// The cluster's processes, killed when the test ends however it ends.
pub struct Cluster {
    children: Vec<Child>,
    logs: tempfile::TempDir,
    port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            child.kill().ok();
            child.wait().ok();
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {:?} (last lines)", entry.file_name());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// A scheduler and `executors` executors (2 cores each), with `env` set.
    pub fn start(executors: usize, env: &[(&str, String)]) -> Cluster {
        let logs = tempfile::tempdir().unwrap();
        let dir = logs.path().to_path_buf();
        let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
        let port = free_port();
        let mut cluster = Cluster { children: vec![], logs, port };
        let scheduler = Command::new(env!("CARGO_BIN_EXE_datafusion-faiss-scheduler"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1", "--bind-port"])
            .arg(port.to_string())
            .stdout(log("scheduler.log"))
            .stderr(log("scheduler.err"))
            .spawn()
            .unwrap();
        cluster.children.push(scheduler);
        // An executor gives up at once on a scheduler that does not listen yet.
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = cluster.children[0].try_wait() {
                panic!("the Ballista scheduler exited before listening on {port}: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for e in 0..executors {
            let work = dir.join(format!("work-{e}"));
            std::fs::create_dir_all(&work).unwrap();
            let executor = Command::new(env!("CARGO_BIN_EXE_datafusion-faiss-executor"))
                .envs(env.iter().map(|(k, v)| (k, v)))
                .args(["--scheduler-host", "127.0.0.1", "--scheduler-port"])
                .arg(port.to_string())
                .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1", "--vcores", "2"])
                .args(["--bind-port", &free_port().to_string(), "--bind-grpc-port", &free_port().to_string()])
                .args(["--bind-health-port", &free_port().to_string()])
                .arg("--work-dir")
                .arg(&work)
                .stdout(log(&format!("executor-{e}.log")))
                .stderr(log(&format!("executor-{e}.err")))
                .spawn()
                .unwrap();
            cluster.children.push(executor);
        }
        cluster
    }

    /// A client session, once the cluster runs jobs (scheduler up, executors registered).
    pub async fn client(&self) -> SessionContext {
        let remote = datafusion_faiss_ballista::remote(&format!("df://127.0.0.1:{}", self.port)).await.unwrap();
        let started = Instant::now();
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(20), async { remote.sql("SELECT 1").await?.collect().await })
                    .await;
            match attempt {
                Ok(Ok(_)) => return remote,
                _ if started.elapsed() < Duration::from_secs(180) => tokio::time::sleep(Duration::from_millis(500)).await,
                other => panic!("the Ballista cluster did not run a job in 180 s: {other:?}"),
            }
        }
    }
}

