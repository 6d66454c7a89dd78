// TEMPORARY placeholder so the crate compiles; helper-1 replaces this file.
pub struct EchoConfig {
    pub name: String,
    pub http: Vec<std::net::SocketAddr>,
    pub tcp: Vec<std::net::SocketAddr>,
    pub udp: Vec<std::net::SocketAddr>,
}
pub async fn serve(_cfg: EchoConfig) -> std::io::Result<()> {
    std::future::pending().await
}
