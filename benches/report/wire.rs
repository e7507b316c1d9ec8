//! A store wrapper that counts what crosses the wire (GETs, bytes, round trips) and can
//! add a fixed latency to every GET, as a remote region would.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Counters since the wire was made; subtract two snapshots for one query.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub gets: u64,
    pub bytes: u64,
    /// Waves of GETs: one starts when a GET is issued while none is in flight, so GETs
    /// issued together (while another is still open) share one round trip.
    pub round_trips: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, o: Traffic) -> Traffic {
        Traffic { gets: self.gets - o.gets, bytes: self.bytes - o.bytes, round_trips: self.round_trips - o.round_trips }
    }
}

#[derive(Default)]
struct Counters {
    gets: AtomicU64,
    bytes: AtomicU64,
    round_trips: AtomicU64,
    in_flight: AtomicU64,
}

#[derive(Clone)]
pub struct Wire {
    inner: Arc<dyn ObjectStore>,
    latency: Duration,
    counters: Arc<Counters>,
}

impl Wire {
    pub fn new(inner: Arc<dyn ObjectStore>, latency: Duration) -> Wire {
        Wire { inner, latency, counters: Arc::default() }
    }

    pub fn traffic(&self) -> Traffic {
        let c = &self.counters;
        Traffic {
            gets: c.gets.load(Ordering::SeqCst),
            bytes: c.bytes.load(Ordering::SeqCst),
            round_trips: c.round_trips.load(Ordering::SeqCst),
        }
    }
}

/// DFF_WIRE_TRACE=1: every request on stderr, for request-by-request traces.
fn trace(c: &Counters, what: &str, location: Option<&Path>) {
    if std::env::var_os("DFF_WIRE_TRACE").is_some() {
        let at = location.map_or(String::new(), |l| l.to_string());
        eprintln!("wire: {what} {at} (round trip {})", c.round_trips.load(Ordering::SeqCst));
    }
}

/// Marks a GET in flight until its body is read to the end or dropped.
struct InFlight(Arc<Counters>);

impl InFlight {
    /// A request; `gets` counts it unless it is a LIST.
    fn start(c: &Arc<Counters>, get: bool) -> InFlight {
        if get {
            c.gets.fetch_add(1, Ordering::SeqCst);
        }
        if c.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            c.round_trips.fetch_add(1, Ordering::SeqCst);
        }
        InFlight(c.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wire({}, +{:?})", self.inner, self.latency)
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Wire {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let guard = InFlight::start(&self.counters, true);
        let what = match options.head {
            true => "HEAD".to_string(),
            false if options.if_none_match.is_some() => format!("GET {:?} If-None-Match", options.range),
            false => format!("GET {:?}", options.range),
        };
        trace(&self.counters, &what, Some(location));
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let result = self.inner.get_opts(location, options).await?;
        let counters = self.counters.clone();
        let payload = match result.payload {
            GetResultPayload::Stream(s) => GetResultPayload::Stream(
                s.map(move |chunk| {
                    let _open = &guard;
                    if let Ok(bytes) = &chunk {
                        counters.bytes.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                    }
                    chunk
                })
                .boxed(),
            ),
            other => other,
        };
        Ok(GetResult { payload, ..result })
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, latency, counters) = (self.inner.clone(), self.latency, self.counters.clone());
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let guard = InFlight::start(&counters, false);
            trace(&counters, "LIST", prefix.as_ref());
            tokio::time::sleep(latency).await;
            let listed: Vec<_> = inner.list(prefix.as_ref()).collect().await;
            drop(guard);
            futures::stream::iter(listed)
        })
        .flatten()
        .boxed()
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let _guard = InFlight::start(&self.counters, false);
        trace(&self.counters, "LIST", prefix);
        tokio::time::sleep(self.latency).await;
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
