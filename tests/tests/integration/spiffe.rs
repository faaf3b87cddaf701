//! The tests' SPIFFE Workload API server, driven by the `spiffe` crate's
//! client and X.509 source: what SPIRE's agent serves, as that crate reads
//! it, rotations included.

use std::time::Duration;

use connect_tests::workload_api::{Authority, WorkloadApi};
use spiffe::{WorkloadApiClient, X509Source};

const WORKLOAD: &str = "/ns/default/sa/connect";

fn serial(der: &[u8]) -> u64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    u64::try_from(cert.serial.clone()).unwrap()
}

#[tokio::test]
async fn a_spiffe_client_fetches_the_svid_and_its_bundle() {
    let api = WorkloadApi::start(
        Authority::new("example.org"),
        WORKLOAD,
        Duration::from_secs(30),
    )
    .await;
    let client = WorkloadApiClient::connect_to(api.endpoint()).await.unwrap();

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/ns/default/sa/connect"
    );
    let leaf = svid.leaf().as_bytes();
    assert_eq!(leaf, api.current().cert_der.as_slice());
    assert_eq!(serial(leaf), 1);

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let domain = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&domain).expect("the trust domain's bundle");
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        api.authority().bundle_der().as_slice()
    );
}

#[tokio::test]
async fn an_x509_source_follows_every_rotation() {
    let api = WorkloadApi::start(
        Authority::new("example.org"),
        WORKLOAD,
        Duration::from_secs(30),
    )
    .await;
    let source = X509Source::builder()
        .endpoint(api.endpoint())
        .build()
        .await
        .unwrap();
    assert_eq!(serial(source.svid().unwrap().leaf().as_bytes()), 1);

    let mut updates = source.updated();
    for expected in 2..=4 {
        let rotated = api.rotate();
        assert_eq!(rotated.serial, expected);
        let seen = updates.last();
        updates.wait_for(|n| *n > seen).await.unwrap();
        let svid = source.svid().unwrap();
        assert_eq!(svid.leaf().as_bytes(), rotated.cert_der.as_slice());
        assert_eq!(serial(svid.leaf().as_bytes()), expected);
    }
    source.shutdown().await;
}

#[tokio::test]
async fn a_call_without_the_security_header_is_refused() {
    use connect_tests::generated::workload::X509svidRequest;
    use connect_tests::generated::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

    let api = WorkloadApi::start(
        Authority::new("example.org"),
        WORKLOAD,
        Duration::from_secs(30),
    )
    .await;
    let path = api.endpoint().trim_start_matches("unix://").to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let err = SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("security header"), "{err:?}");
}
