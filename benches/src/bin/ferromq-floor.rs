//! The HTTP stack's floor: the server's stack (tokio's multi-thread runtime, hyper's HTTP/1.1
//! server, TCP_NODELAY) with no queue behind it. Every request's body is read whole and
//! answered with the post's 201 JSON. `ferromq-load post --raw-url` against it, beside nginx's
//! fixed 200 and `ferromq serve`, tells what the stack itself costs on a machine: the part of
//! a latency figure that no change to the engine or the handlers can remove.
//!
//! Usage: `ferromq-floor [--listen 127.0.0.1:8089]`; runs until killed.

use std::convert::Infallible;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

#[derive(Parser)]
#[command(about = "hyper answering every POST with a fixed 201, for latency floors")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: String,
}

const ANSWER: &str = r#"{"ids":["1"],"msg":"Messages put on queue."}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body whole, as the server's post handler does, and drop it.
    let read = req.into_body().collect().await.is_ok();
    let status = if read {
        StatusCode::CREATED
    } else {
        StatusCode::BAD_REQUEST
    };
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
        .expect("a fixed response");
    Ok(resp)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        eprintln!("ferromq-floor listening on {}", listener.local_addr()?);
        loop {
            let (sock, _) = listener.accept().await?;
            sock.set_nodelay(true)?;
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(sock), hyper::service::service_fn(answer))
                    .await;
            });
        }
    })
}
