//! A Pingora proxy with no policy at all: the floor the gateway is measured against in
//! `bench/gateway.sh` (how much of the gateway's cost is Pingora itself).
//!
//! Run with: `cargo run --release -p gateway --example bare_proxy -- LISTEN UPSTREAM [SERVER_CONF]`
//!
//! `SERVER_CONF` is an optional Pingora server configuration file (YAML, the format Pingora
//! documents: `version: 1`, `threads`, `work_stealing`, `listener_tasks_per_fd`,
//! `upstream_keepalive_pool_size`, ...); `bench/gateway.sh` uses it to try Pingora's knobs. Without
//! it the proxy runs Pingora's defaults with `threads: 1`, the same as the gateway's `workers: 1`.

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18084".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    let conf = match args.next() {
        Some(path) => match ServerConf::load_from_yaml(&path) {
            Ok(conf) => conf,
            Err(e) => {
                eprintln!("bare_proxy: {path}: {e}");
                std::process::exit(78);
            }
        },
        None => ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    };
    eprintln!(
        "bare_proxy: threads {}, work_stealing {}, listener_tasks_per_fd {}, upstream_keepalive_pool_size {}",
        conf.threads, conf.work_stealing, conf.listener_tasks_per_fd, conf.upstream_keepalive_pool_size
    );
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
