//! The sink decodes real OTLP exports (gRPC through a tonic client, HTTP/protobuf through a plain
//! POST) and counts exactly the spans they carry; anything else is refused and not counted.

use std::net::{Ipv4Addr, SocketAddr};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otlp_sink::{Counts, Sink};
use prost::Message as _;

fn request(spans_per_scope: &[usize]) -> ExportTraceServiceRequest {
    let scope_spans = spans_per_scope
        .iter()
        .map(|&n| ScopeSpans {
            spans: (0..n)
                .map(|i| Span {
                    trace_id: vec![1; 16],
                    span_id: vec![u8::try_from(i).unwrap() + 1; 8],
                    name: format!("GET /{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans,
            ..Default::default()
        }],
    }
}

async fn start() -> (
    SocketAddr,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let sink = Sink::bind(any, any).await.unwrap();
    let (grpc, http) = (sink.grpc_addr().unwrap(), sink.http_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        sink.serve(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (grpc, http, stop, task)
}

async fn stats(http: SocketAddr) -> serde_json::Value {
    let body = reqwest::get(format!("http://{http}/stats"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn counts_spans_from_grpc_and_http_exports_and_refuses_garbage() {
    let (grpc, http, stop, task) = start().await;

    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client.export(request(&[2, 1])).await.unwrap();
    client.export(request(&[4])).await.unwrap();

    let http_client = reqwest::Client::new();
    let ok = http_client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request(&[5]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let garbage = http_client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let json = http_client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 415);

    let body = stats(http).await;
    assert_eq!(body["grpc_requests"], 2, "{body}");
    assert_eq!(body["http_requests"], 1, "{body}");
    assert_eq!(body["spans"], 2 + 1 + 4 + 5, "{body}");
    assert_eq!(body["rejected"], 2, "{body}");
    assert_eq!(
        body["http_bytes"],
        request(&[5]).encoded_len(),
        "only the decoded body counts: {body}"
    );

    stop.send(()).unwrap();
    task.await.unwrap();
}

#[test]
fn counts_json_names_every_field() {
    let counts = Counts {
        grpc_requests: 1,
        http_requests: 2,
        spans: 3,
        http_bytes: 4,
        rejected: 5,
    };
    let v: serde_json::Value = serde_json::from_str(&counts.to_json()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"grpc_requests": 1, "http_requests": 2, "spans": 3, "http_bytes": 4, "rejected": 5})
    );
}
