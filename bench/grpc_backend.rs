//! The gRPC backend of `bench/grpc.py`: a tonic server (HTTP/2 cleartext) on `127.0.0.1:PORT`
//! whose one unary method `/bench.Echo/Unary` answers every request with the bytes it got, on a
//! single-threaded runtime (the benchmark pins it to one core). Hand-routed like
//! `tests/grpc_e2e.rs`: no code generation. Usage: `grpc-bench-backend PORT`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::Status;
use tonic_prost::ProstCodec;

/// One string field, as a typical small RPC carries.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

struct Unary;

impl UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = std::future::Ready<Result<tonic::Response<Msg>, Status>>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(req.into_inner())))
    }
}

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "bench.Echo";
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            Ok(match req.uri().path() {
                "/bench.Echo/Unary" => {
                    Grpc::new(ProstCodec::<Msg, Msg>::default())
                        .unary(Unary, req)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: grpc-bench-backend PORT");
    tonic::transport::Server::builder()
        .add_service(Echo)
        .serve(([127, 0, 0, 1], port).into())
        .await
        .expect("serve");
}
