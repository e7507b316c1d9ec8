//! A fault-injecting HTTP reverse proxy for the S3 tests: forwards each request unchanged
//! (the Host header stays, so SigV4 signatures still match) and can answer with an error,
//! delay, or cut a response body short. One request per connection; TCP_NODELAY on both
//! sides (Nagle plus delayed ACKs would add ~40 ms per request on loopback).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Rng;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    None,
    /// The next `n` requests get `status`.
    Fail {
        n: usize,
        status: u16,
    },
    /// Each request gets a 500 with this probability (percent).
    FailRandom {
        percent: u64,
    },
    /// The next `n` GET responses with a body lose the second half of it.
    CutBody {
        n: usize,
    },
    /// Every request waits this long before it is forwarded.
    Delay(Duration),
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    rng: Mutex<Rng>,
    requests: AtomicUsize,
    injected: AtomicUsize,
    log: Mutex<Vec<Logged>>,
    in_flight: AtomicUsize,
    waves: AtomicUsize,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// The object key (path without the bucket).
    pub key: String,
    /// `bytes=a-b`, if ranged.
    pub range: Option<String>,
    /// The request was conditional on the object being another version.
    pub if_none_match: bool,
    pub status: u16,
    /// Round trip it belongs to: one starts when a request arrives while none is open.
    pub wave: usize,
}

enum Action {
    Pass,
    Status(u16),
    Cut,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            fault: Mutex::new(Fault::None),
            rng: Mutex::new(Rng(0x5EED)),
            requests: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
            log: Mutex::new(vec![]),
            in_flight: AtomicUsize::new(0),
            waves: AtomicUsize::new(0),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, &s).await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
        self.state.injected.store(0, Ordering::SeqCst);
    }

    /// Faults injected since the last `set`.
    pub fn injected(&self) -> usize {
        self.state.injected.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every request answered so far, and forgets them.
    pub fn take_log(&self) -> Vec<Logged> {
        std::mem::take(&mut *self.state.log.lock().unwrap())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl State {
    fn decide(&self, is_get: bool) -> (Action, Duration) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut fault = self.fault.lock().unwrap();
        let inject = |a: Action| {
            self.injected.fetch_add(1, Ordering::SeqCst);
            a
        };
        match &mut *fault {
            Fault::None => (Action::Pass, Duration::ZERO),
            Fault::Fail { n, status } if *n > 0 => {
                *n -= 1;
                (inject(Action::Status(*status)), Duration::ZERO)
            }
            Fault::FailRandom { percent } if self.rng.lock().unwrap().next() % 100 < *percent => {
                (inject(Action::Status(500)), Duration::ZERO)
            }
            Fault::CutBody { n } if *n > 0 && is_get => {
                *n -= 1;
                (inject(Action::Cut), Duration::ZERO)
            }
            Fault::Delay(d) => (Action::Pass, *d),
            _ => (Action::Pass, Duration::ZERO),
        }
    }
}

async fn serve(mut client: TcpStream, state: &State) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let Some(request) = read_request(&mut client).await? else { return Ok(()) };
    let wave = match state.in_flight.fetch_add(1, Ordering::SeqCst) {
        0 => state.waves.fetch_add(1, Ordering::SeqCst) + 1,
        _ => state.waves.load(Ordering::SeqCst),
    };
    let open = Open(state);
    let result = forward(&mut client, request, state).await;
    drop(open);
    if let Ok((mut logged, status)) = result {
        logged.status = status;
        logged.wave = wave;
        state.log.lock().unwrap().push(logged);
    }
    Ok(())
}

/// A request the proxy has not answered yet.
struct Open<'a>(&'a State);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn logged(request: &[u8]) -> Logged {
    let head_end = find(request, b"\r\n\r\n").unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").split('?').next().unwrap_or("").to_string();
    // Path-style: /bucket/key.
    let key = target.trim_start_matches('/').split_once('/').map(|(_, k)| k.to_string()).unwrap_or_default();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    Logged { method, key, range: header("range"), if_none_match: header("if-none-match").is_some(), status: 0, wave: 0 }
}

/// Answers one request; what it was, and the status sent.
async fn forward(client: &mut TcpStream, request: Vec<u8>, state: &State) -> std::io::Result<(Logged, u16)> {
    let logged = logged(&request);
    let is_get = request.starts_with(b"GET ");
    let (action, delay) = state.decide(is_get);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Action::Status(code) = action {
        let body = format!("<Error><Code>InjectedFault</Code><Message>{code} from the fault proxy</Message></Error>");
        let head = format!("HTTP/1.1 {code} Injected\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        client.write_all(head.as_bytes()).await?;
        client.write_all(body.as_bytes()).await?;
        client.shutdown().await?;
        return Ok((logged, code));
    }
    let mut upstream = TcpStream::connect(state.upstream).await?;
    upstream.set_nodelay(true)?;
    upstream.write_all(&with_connection_close(&request)).await?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response).await?;
    if let Action::Cut = action {
        let head_end = find(&response, b"\r\n\r\n").map(|i| i + 4).unwrap_or(response.len());
        let body = response.len() - head_end;
        if body > 1 {
            response.truncate(head_end + body / 2);
        }
    }
    client.write_all(&response).await?;
    client.shutdown().await?;
    let status = String::from_utf8_lossy(&response[..response.len().min(12)]).split(' ').nth(1).and_then(|s| s.parse().ok());
    Ok((logged, status.unwrap_or(0)))
}

/// One HTTP/1.1 request (head and Content-Length body); `None` at a clean EOF.
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap_or(0))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}

/// The request with `Connection: close` (not a signed header), so the upstream ends the
/// response with EOF.
fn with_connection_close(request: &[u8]) -> Vec<u8> {
    let head_end = find(request, b"\r\n\r\n").unwrap() + 2;
    let head = String::from_utf8_lossy(&request[..head_end]);
    let mut out: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&request[head_end..]);
    bytes
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
