//! The metrics HTTP endpoint: Prometheus text exposition of the installed recorder on every GET
//! (any path, as `metrics-exporter-prometheus`'s own listener serves it), one connection at a
//! time, plus the recorder's periodic upkeep. rcaflow serves it itself, rather than through the
//! exporter's listener, to know when a scrape has been served: the metrics set when a run ends
//! (KID, precision/recall, per-class FID and KID) reach Prometheus only if the process waits
//! for one more scrape before it exits ([`scraped_since`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

/// Scrapes begun (each takes the next number before rendering).
static BEGUN: AtomicU64 = AtomicU64::new(0);
/// One past the number of the latest scrape whose response was written whole.
static SERVED: AtomicU64 = AtomicU64::new(0);

/// How often histograms are folded (the exporter's own listener does it every 5 s).
const UPKEEP: Duration = Duration::from_secs(5);
/// A client that sends no request head in this time is dropped (one connection at a time).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// A mark to compare later scrapes with: scrapes begun until now.
pub fn scrape_mark() -> u64 {
    BEGUN.load(Ordering::SeqCst)
}

/// Whether a scrape that began after `mark` was served whole: it carried every value set
/// before the mark was taken.
pub fn scraped_since(mark: u64) -> bool {
    SERVED.load(Ordering::SeqCst) > mark
}

/// Whether any scrape has been served since the process started.
pub fn ever_scraped() -> bool {
    SERVED.load(Ordering::SeqCst) > 0
}

/// Serves `handle` on `listener` and runs its upkeep, each on its own thread, until the process
/// exits.
pub(super) fn serve(listener: TcpListener, handle: PrometheusHandle) -> std::io::Result<()> {
    let upkeep = handle.clone();
    std::thread::Builder::new().name("rcaflow-metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(UPKEEP);
        upkeep.run_upkeep();
    })?;
    std::thread::Builder::new().name("rcaflow-metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            // A failed connection is the client's business; the endpoint keeps serving.
            if let Ok(stream) = stream {
                let _ = answer(stream, &handle);
            }
        }
    })?;
    Ok(())
}

/// Reads one request head and answers it; the connection closes after the answer.
fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let method = head.split(|&b| b == b' ').next().unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        let body = "only GET and HEAD are served\n";
        write!(
            stream,
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return stream.flush();
    }
    let number = BEGUN.fetch_add(1, Ordering::SeqCst);
    let body = handle.render();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method == b"GET" {
        stream.write_all(body.as_bytes())?;
        stream.flush()?;
        SERVED.fetch_max(number + 1, Ordering::SeqCst);
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(addr: std::net::SocketAddr, head: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_scrape_counts_once_served_whole_and_other_methods_are_refused() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || metrics::gauge!("rcaflow_test_value").set(1.5));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, handle).unwrap();

        let mark = scrape_mark();
        let refused = request(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(refused.starts_with("HTTP/1.1 405 "), "{refused}");
        let head = request(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(!scraped_since(mark), "neither a refused request nor a HEAD carries the values");
        let got = request(addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.contains("\nrcaflow_test_value 1.5\n"), "{got}");
        assert!(scraped_since(mark) && ever_scraped());
        assert!(!scraped_since(scrape_mark()), "a new mark waits for the next scrape");
    }
}
