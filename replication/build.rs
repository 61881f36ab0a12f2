//! Generates the replication service's gRPC code from `proto/replication.proto`
//! (feature `node`), with the vendored `protoc` unless `PROTOC` names another one.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "node")]
    {
        println!("cargo:rerun-if-changed=proto/replication.proto");
        println!("cargo:rerun-if-env-changed=PROTOC");
        if std::env::var_os("PROTOC").is_none() {
            let protoc = protoc_bin_vendored::protoc_bin_path()?;
            // SAFETY: a build script is single-threaded; nothing reads the
            // environment concurrently.
            unsafe { std::env::set_var("PROTOC", protoc) };
        }
        tonic_prost_build::configure().compile_protos(&["proto/replication.proto"], &["proto"])?;
    }
    Ok(())
}
