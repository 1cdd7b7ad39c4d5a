//! Real nginx (Debian's `nginx-light`) in the server namespace of a veth pair, for tests that
//! need a real server: fault injection, load generation, the profile round trip.
//!
//! A missing nginx is a failure, not a skip (`cargo xtask setup` installs it).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns::{VethConfig, VethPair};
use crate::process::BackgroundProcess;
use crate::workdir::WorkDir;

/// The port nginx listens on.
pub const PORT: u16 = 8080;
/// The Host of [`Nginx::plain_get`].
pub const HOST: &str = "nginx.test";
/// The file nginx serves.
pub const PATH: &str = "/index.html";
/// Its size.
pub const FILE_BYTES: usize = 300;

/// nginx in the server namespace of a veth pair. Fields drop in order after `Drop::drop` stopped nginx:
/// then the namespaces (killing anything left in them), then the directory.
pub struct Nginx {
    pub nginx: BackgroundProcess,
    pub pair: VethPair,
    pub dir: WorkDir,
    pub server_v4: Ipv4Addr,
}

impl Nginx {
    /// nginx (one worker, keep-alive, a 300-byte index.html, unknown paths 404) listening on
    /// the server end of a new veth pair and on the server namespace's loopback, port
    /// [`PORT`].
    pub fn start() -> Self {
        assert!(
            Path::new("/usr/sbin/nginx").is_file()
                || crate::process::find_in_path("nginx").is_some(),
            "nginx not found: DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light"
        );
        let dir = WorkDir::create("shadowtap-nginx-");
        std::fs::create_dir_all(dir.0.join("www")).expect("creating the web root");
        // IPv4 only: with IPv6 off the kernel sends nothing of its own on the link.
        let pair = VethPair::create(VethConfig {
            ipv6: false,
            ..VethConfig::default()
        })
        .expect("creating the veth pair");
        let server_v4 = pair.server_v4.expect("server address");
        let d = dir.0.display();
        let body: String = "shadowtap nginx test target. "
            .chars()
            .cycle()
            .take(FILE_BYTES - 1)
            .chain(std::iter::once('\n'))
            .collect();
        std::fs::write(dir.0.join("www/index.html"), body).expect("writing index.html");
        let mut conf = String::new();
        writeln!(conf, "worker_processes 1;\ndaemon off;").expect("fmt");
        writeln!(conf, "error_log {d}/error.log info;\npid {d}/nginx.pid;").expect("fmt");
        writeln!(conf, "events {{ worker_connections 256; }}").expect("fmt");
        writeln!(
            conf,
            "http {{\n  access_log {d}/access.log;\n  server {{ listen {server_v4}:{PORT}; \
             listen 127.0.0.1:{PORT}; root {d}/www; }}\n}}"
        )
        .expect("fmt");
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("writing nginx.conf");
        // `-e` so that nginx does not touch /var/log/nginx before it has read our config.
        let mut cmd = pair.server.command("nginx");
        cmd.arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let nginx = BackgroundProcess::spawn(cmd, "nginx", &dir.0).expect("starting nginx");
        let mut bed = Self {
            nginx,
            pair,
            dir,
            server_v4,
        };
        bed.wait_ready();
        bed
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.nginx.try_wait().expect("polling nginx") {
                panic!("nginx exited ({status}); {}", self.nginx.stderr_tail());
            }
            if let Some(response) = self.plain_get() {
                assert!(
                    response.starts_with("HTTP/1.1 200"),
                    "nginx answered {response:.200}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not answer within 10 s; {}",
                self.nginx.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain GET from the client namespace; `None` while nothing listens.
    pub fn plain_get(&self) -> Option<String> {
        let mut stream = self
            .pair
            .client
            .tcp_connect(self.target(), Duration::from_millis(500))
            .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!("GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    pub fn target(&self) -> SocketAddr {
        SocketAddr::from((self.server_v4, PORT))
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }

    pub fn assert_still_serving(&mut self) {
        assert!(
            self.nginx.try_wait().expect("polling nginx").is_none(),
            "nginx died; {}",
            self.nginx.stderr_tail()
        );
        let response = self.plain_get().expect("a plain GET after the fault");
        assert!(response.starts_with("HTTP/1.1 200"), "{response:.200}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its worker, then exits.
        if let Err(e) = self.nginx.stop(libc::SIGTERM, Duration::from_secs(5)) {
            eprintln!("stopping nginx: {e}");
        }
    }
}
