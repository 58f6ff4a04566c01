//! A throw-away `redis-server` on 127.0.0.1 for the remote tier's Rust tests (started on a free
//! port, ready when it answers PING, killed when dropped). Included by the tests that need it
//! with `#[path = "common/redis_server.rs"] mod redis_server;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub fn start(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `make test-deps`");
        let s = RedisServer { child, port };
        // Readiness: PING answered.
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                let mut buf = [0u8; 7];
                if c.write_all(b"PING\r\n").is_ok()
                    && c.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return s;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not answer PING on port {port}");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
