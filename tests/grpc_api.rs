//! Black-box gRPC tests: a client generated from `api/proto/engram.proto`
//! against the real `engram` binary, plus the standard health and
//! reflection services that `grpcurl` and other tools rely on.

mod common;

use common::Server;
use engram_api::grpc::pb;
use pb::memory_service_client::MemoryServiceClient;
use tonic::Code;
use tonic::transport::Channel;

async fn client(s: &Server) -> MemoryServiceClient<Channel> {
    MemoryServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_service_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let mut c = client(&s).await;

    let space = c
        .create_space(pb::CreateSpaceRequest {
            write_concern: String::new(),
            id: "agents".into(),
            embedding_dim: Some(2),
            hot_capacity: None,
        })
        .await
        .expect("create space")
        .into_inner();
    assert_eq!(space.id, "agents");
    assert_eq!(space.embedding_dim, Some(2));

    let a = c
        .remember(pb::RememberRequest {
            space: "agents".into(),
            content: "the robot charges at dock seven".into(),
            tags: vec!["robot".into()],
            metadata_json: r#"{"k": 1}"#.into(),
            embedding: vec![1.0, 0.0],
            ..Default::default()
        })
        .await
        .expect("remember")
        .into_inner();
    assert_eq!(a.space, "agents");
    assert_eq!(a.id.len(), 26);
    let b = c
        .remember(pb::RememberRequest {
            space: "agents".into(),
            content: "dock seven is next to the loading bay".into(),
            ..Default::default()
        })
        .await
        .expect("remember")
        .into_inner();
    c.link(pb::LinkRequest {
        write_concern: String::new(),
        space: "agents".into(),
        source: a.id.clone(),
        target: b.id.clone(),
        weight: Some(0.9),
    })
    .await
    .expect("link");

    let got = c
        .get(pb::GetRequest {
            space: "agents".into(),
            id: a.id.clone(),
            include_embedding: true,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.content, "the robot charges at dock seven");
    assert_eq!(got.embedding, vec![1.0, 0.0]);
    assert_eq!(got.tags, vec!["robot".to_owned()]);
    let meta: serde_json::Value = serde_json::from_str(&got.metadata_json).expect("json");
    assert_eq!(meta["k"], 1);

    let r = c
        .recall(pb::RecallRequest {
            space: "agents".into(),
            cue: Some(pb::Cue {
                text: Some("robot charges".into()),
                ..Default::default()
            }),
            limit: 5,
            spread: Some(pb::Spread {
                depth: Some(1),
                ..Default::default()
            }),
        })
        .await
        .expect("recall")
        .into_inner();
    assert_eq!(r.count as usize, r.results.len());
    let first = r.results[0].memory.as_ref().expect("memory");
    assert_eq!(first.id, a.id);
    assert_eq!(r.results[0].via.as_ref().expect("via").kind, "lexical");
    let linked = r
        .results
        .iter()
        .find(|x| x.memory.as_ref().is_some_and(|m| m.id == b.id))
        .expect("linked memory recalled by spreading");
    assert_eq!(linked.via.as_ref().expect("via").kind, "edge");

    let spaces = c
        .list_spaces(pb::ListSpacesRequest {})
        .await
        .expect("list")
        .into_inner();
    let agents = spaces
        .spaces
        .iter()
        .find(|s| s.id == "agents")
        .expect("agents");
    assert_eq!(agents.memories, 2);

    c.consolidate(pb::ConsolidateRequest {
        write_concern: String::new(),
        space: "agents".into(),
        threshold: Some(0.5),
    })
    .await
    .expect("consolidate");

    c.forget(pb::ForgetRequest {
        write_concern: String::new(),
        space: "agents".into(),
        id: a.id.clone(),
    })
    .await
    .expect("forget");
    let err = c
        .get(pb::GetRequest {
            space: "agents".into(),
            id: a.id.clone(),
            include_embedding: false,
        })
        .await
        .expect_err("forgotten");
    assert_eq!(err.code(), Code::NotFound);

    // The same memory id is invisible from another space.
    let err = c
        .get(pb::GetRequest {
            space: String::new(),
            id: b.id.clone(),
            include_embedding: false,
        })
        .await
        .expect_err("other space");
    assert_eq!(err.code(), Code::NotFound);

    c.delete_space(pb::DeleteSpaceRequest {
        id: "agents".into(),
    })
    .await
    .expect("delete space");

    // Calls are counted per method and code.
    let metrics = s.get("/metrics").text();
    for line in [
        "engram_grpc_requests_total{code=\"Ok\",method=\"Remember\"} 2",
        "engram_grpc_requests_total{code=\"NotFound\",method=\"Get\"} 2",
        "engram_grpc_request_duration_seconds_count{method=\"Recall\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_input_gets_client_error_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let mut c = client(&s).await;
    let cases: Vec<(pb::RememberRequest, Code)> = vec![
        (
            pb::RememberRequest {
                content: String::new(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::RememberRequest {
                content: "x".into(),
                space: "no/such".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::RememberRequest {
                content: "x".into(),
                space: "missing".into(),
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            pb::RememberRequest {
                content: "x".into(),
                metadata_json: "[1,2]".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::RememberRequest {
                content: "x".into(),
                confidence: Some(3.0),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::RememberRequest {
                content: "x".repeat(2 * 1024 * 1024),
                ..Default::default()
            },
            // tonic's answer to a message above server.body_limit_bytes.
            Code::OutOfRange,
        ),
    ];
    for (req, want) in cases {
        let err = c.remember(req).await.expect_err("must fail");
        assert_eq!(err.code(), want, "{}", err.message());
    }
    let err = c
        .create_space(pb::CreateSpaceRequest {
            write_concern: String::new(),
            id: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::AlreadyExists);
    // Still serving.
    c.remember(pb::RememberRequest {
        content: "fine".into(),
        ..Default::default()
    })
    .await
    .expect("remember after errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_services_answer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let channel = Channel::from_shared(format!("http://{}", s.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut h = HealthClient::new(channel.clone());
    for service in ["", "engram.v1.MemoryService"] {
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut r = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "engram.v1.MemoryService"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}

/// Python's grpcio-reflection and older grpcurl speak
/// `grpc.reflection.v1alpha`: it lists the same services as v1 and resolves
/// a symbol of the Engram API to its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_answers() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let channel = Channel::from_shared(format!("http://{}", s.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut r = ServerReflectionClient::new(channel);
    let requests = vec![
        tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "engram.v1.MemoryService".into(),
            )),
        },
    ];
    let mut stream = r
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1alpha reflection")
        .into_inner();

    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("list answer");
    let list = match resp.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list,
        other => panic!("unexpected v1alpha reflection answer: {other:?}"),
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "engram.v1.MemoryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }

    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("symbol answer");
    let files = match resp.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files,
        other => panic!("unexpected v1alpha reflection answer: {other:?}"),
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// gRPC honours `x-memory-space` metadata exactly as HTTP honours the
/// `X-Memory-Space` header: it selects the space, it must agree with the
/// message's `space` field, and it may be given once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_metadata_selects_the_space_like_the_http_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let mut c = client(&s).await;
    c.create_space(pb::CreateSpaceRequest {
        write_concern: String::new(),
        id: "tenant".into(),
        embedding_dim: None,
        hot_capacity: None,
    })
    .await
    .expect("create space");
    let with_space = |space: &[&str], msg: pb::RememberRequest| {
        let mut r = tonic::Request::new(msg);
        for v in space {
            r.metadata_mut()
                .append("x-memory-space", v.parse().expect("ascii"));
        }
        r
    };
    let content = |t: &str| pb::RememberRequest {
        content: t.into(),
        ..Default::default()
    };
    let stored = c
        .remember(with_space(&["tenant"], content("by metadata")))
        .await
        .expect("remember")
        .into_inner();
    assert_eq!(
        stored.space, "tenant",
        "metadata ignored: written to {}",
        stored.space
    );
    let got = c
        .get(tonic::Request::from_parts(
            {
                let mut m = tonic::metadata::MetadataMap::new();
                m.insert("x-memory-space", "tenant".parse().expect("ascii"));
                m
            },
            Default::default(),
            pb::GetRequest {
                id: stored.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("get by metadata")
        .into_inner();
    assert_eq!(got.content, "by metadata");
    // Not visible in the default space.
    let e = c
        .get(pb::GetRequest {
            id: stored.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("default space");
    assert_eq!(e.code(), Code::NotFound);
    // Metadata and field disagree, or metadata twice: INVALID_ARGUMENT.
    let mut conflict = content("x");
    conflict.space = "default".into();
    for req in [
        with_space(&["tenant"], conflict),
        with_space(&["tenant", "tenant"], content("x")),
    ] {
        let e = c.remember(req).await.expect_err("conflict");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("space_conflict"), "{}", e.message());
    }
}
