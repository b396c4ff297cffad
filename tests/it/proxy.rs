//! A TCP proxy to the test server that can fail the way networks fail: freeze
//! (stop forwarding, keep both sockets open, as when packets are dropped) and cut
//! (close both sides) once a connection has carried a number of bytes, or right
//! after it forwards a `COMMIT`; thaw, and cut everything, on command. It reads the client's side
//! message by message (1-byte type, 4-byte big-endian length, after the untyped
//! startup message), so clients must connect with `sslmode=disable`.
//!
//! Threads and blocking sockets: each connection is two threads, one a
//! direction; a frozen direction waits on a condition variable before writing.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Which way bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// What a trigger does to the connection that fires it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop forwarding on that connection; it stays open.
    Freeze,
    /// Stop forwarding on every connection, and on every new one: the network is gone.
    FreezeEverything,
    /// Close both sides of that connection.
    Cut,
}

#[derive(Default)]
struct State {
    /// Open connections: (id, client socket, server socket, frozen).
    conns: Vec<Conn>,
    next_id: usize,
    /// New connections start frozen.
    freeze_new: bool,
    /// Fires once a connection has forwarded more than this many bytes in this
    /// direction (one shot).
    after_bytes: Option<(Direction, u64, Action)>,
    /// Fires on the first client message holding these bytes (a query's text),
    /// before it is forwarded (one shot).
    on_message: Option<(Vec<u8>, Action)>,
    /// Fires right after a client's `COMMIT` is forwarded, this many more times.
    after_commit: Option<(Action, u32)>,
    /// Triggers fired so far.
    fired: u32,
    /// Connections accepted so far.
    accepted: u32,
    /// The proxy was dropped: new connections are closed at once.
    closed: bool,
}

struct Conn {
    id: usize,
    client: TcpStream,
    server: TcpStream,
    frozen: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A running proxy; it stops forwarding when dropped (its threads end with the
/// test process).
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on a free local port to the test server.
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = url::Url::parse(&crate::common::server_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            server.host_str().unwrap_or("127.0.0.1"),
            server.port().unwrap_or(5432)
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let id = {
                    let mut state = accepting.state.lock().unwrap();
                    if state.closed {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        continue;
                    }
                    state.accepted += 1;
                    let id = state.next_id;
                    state.next_id += 1;
                    let frozen = state.freeze_new;
                    state.conns.push(Conn {
                        id,
                        client: client.try_clone().unwrap(),
                        server: server.try_clone().unwrap(),
                        frozen,
                    });
                    id
                };
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || relay_raw(&shared, id, s, c));
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || relay_messages(&shared, id, client, server));
            }
        });
        Proxy { port, shared }
    }

    /// `url` (a test database's) pointed at the proxy, without TLS.
    pub fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.set_query(Some("sslmode=disable"));
        url.to_string()
    }

    /// Forwards again on every connection, new ones included.
    pub fn thaw(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.freeze_new = false;
        for conn in &mut state.conns {
            conn.frozen = false;
        }
        self.shared.changed.notify_all();
    }

    /// Closes both sides of every open connection.
    pub fn cut(&self) {
        let mut state = self.shared.state.lock().unwrap();
        for conn in state.conns.drain(..) {
            shut(&conn);
        }
        self.shared.changed.notify_all();
    }

    /// Arms a one-shot trigger: the first connection to forward more than `bytes`
    /// bytes in `direction` gets `action`.
    pub fn after_bytes(&self, direction: Direction, bytes: u64, action: Action) {
        self.shared.state.lock().unwrap().after_bytes = Some((direction, bytes, action));
    }

    /// Arms a trigger that fires right after the next `times` client `COMMIT`s
    /// are forwarded to the server (before its answer can come back).
    pub fn after_commit(&self, action: Action, times: u32) {
        self.shared.state.lock().unwrap().after_commit = Some((action, times));
    }

    /// Arms a one-shot trigger: the first client message (a query) that holds
    /// `text` gets `action` before it is forwarded.
    pub fn on_message(&self, text: &str, action: Action) {
        self.shared.state.lock().unwrap().on_message = Some((text.as_bytes().to_vec(), action));
    }

    /// How many times a trigger fired.
    pub fn fired(&self) -> u32 {
        self.shared.state.lock().unwrap().fired
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.shared.state.lock().unwrap().accepted
    }
}

/// Cuts every connection, so no server session is left waiting on a frozen one.
/// (A backend blocked reading COPY data from a client that sends nothing does
/// not even absorb the server's signal barriers: `DROP DATABASE ... WITH (FORCE)`
/// then waits on it, for every database of the server.)
impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().closed = true;
        self.cut();
    }
}

fn shut(conn: &Conn) {
    let _ = conn.client.shutdown(Shutdown::Both);
    let _ = conn.server.shutdown(Shutdown::Both);
}

/// Applies `action` to connection `id` (the state is locked).
fn apply(shared: &Shared, state: &mut State, id: usize, action: Action) {
    state.fired += 1;
    match action {
        Action::Freeze => {
            if let Some(conn) = state.conns.iter_mut().find(|c| c.id == id) {
                conn.frozen = true;
            }
        }
        Action::FreezeEverything => {
            state.freeze_new = true;
            for conn in &mut state.conns {
                conn.frozen = true;
            }
        }
        Action::Cut => {
            if let Some(i) = state.conns.iter().position(|c| c.id == id) {
                shut(&state.conns.remove(i));
            }
        }
    }
    shared.changed.notify_all();
}

/// Counts `n` more bytes forwarded on `id` in `direction` (fires the byte
/// trigger), then waits while the connection is frozen. Returns false once the
/// connection is gone (cut).
fn pass(shared: &Shared, id: usize, direction: Direction, total: &mut u64, n: usize) -> bool {
    let mut state = shared.state.lock().unwrap();
    *total += n as u64;
    if let Some((d, bytes, action)) = state.after_bytes {
        if d == direction && *total > bytes {
            state.after_bytes = None;
            apply(shared, &mut state, id, action);
        }
    }
    loop {
        match state.conns.iter().find(|c| c.id == id) {
            None => return false,
            Some(conn) if !conn.frozen => return true,
            Some(_) => {
                state = shared
                    .changed
                    .wait_timeout(state, Duration::from_millis(200))
                    .unwrap()
                    .0;
            }
        }
    }
}

fn forget(shared: &Shared, id: usize) {
    let mut state = shared.state.lock().unwrap();
    if let Some(i) = state.conns.iter().position(|c| c.id == id) {
        shut(&state.conns.remove(i));
    }
    shared.changed.notify_all();
}

/// Server to client: bytes as they come.
fn relay_raw(shared: &Shared, id: usize, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !pass(shared, id, Direction::ServerToClient, &mut total, n) {
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    forget(shared, id);
}

/// Client to server: message by message, to see each `COMMIT`.
fn relay_messages(shared: &Shared, id: usize, client: TcpStream, mut to: TcpStream) {
    let mut from = BufReader::new(client);
    let mut total = 0;
    // Untyped messages (an SSL request, the startup message) until the startup
    // message (protocol 3.0), then typed ones.
    let mut started = false;
    loop {
        let mut message = Vec::new();
        if started {
            let mut kind = [0u8; 1];
            if from.read_exact(&mut kind).is_err() {
                break;
            }
            message.push(kind[0]);
        }
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).is_err() {
            break;
        }
        message.extend_from_slice(&len);
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        if from.read_exact(&mut body).is_err() {
            break;
        }
        if !started && body.starts_with(&[0, 3, 0, 0]) {
            started = true;
        }
        let commit = message.first() == Some(&b'Q') && body == b"COMMIT\0";
        {
            let mut state = shared.state.lock().unwrap();
            let holds = |text: &[u8]| body.windows(text.len()).any(|w| w == text);
            if let Some((text, action)) = state.on_message.clone() {
                if started && holds(&text) {
                    state.on_message = None;
                    apply(shared, &mut state, id, action);
                }
            }
        }
        message.extend_from_slice(&body);
        if !pass(
            shared,
            id,
            Direction::ClientToServer,
            &mut total,
            message.len(),
        ) {
            break;
        }
        if to.write_all(&message).is_err() {
            break;
        }
        if commit {
            let mut state = shared.state.lock().unwrap();
            if let Some((action, times)) = state.after_commit {
                state.after_commit = (times > 1).then_some((action, times - 1));
                apply(shared, &mut state, id, action);
            }
        }
    }
    forget(shared, id);
}
