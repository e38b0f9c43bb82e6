//! `:authority` repair on accepted HTTP/2 connections (spec go-plugin-wire.md §7: the gRPC
//! transport). grpc-go, which serves every Go plugin, never parses a request's `:authority`;
//! h2, under tonic, refuses a request whose authority is not a valid URI authority with
//! RST_STREAM PROTOCOL_ERROR ("malformed authority", hyperium/h2#487). gRPC core, under
//! Python's grpcio and Ruby's grpc, sends the percent-encoded socket path there for a `unix:`
//! target (`tmp%2Fplugin123%2Fplugin.sock` for `unix:/tmp/plugin123/plugin.sock`), so such a
//! host could call a Go plugin but not ours.
//!
//! [`AuthorityRepair`] reads what the client sends up to its first header block. When that
//! block's authority is valid or absent, as from every grpc-go and tonic host, the connection
//! passes through untouched from then on. Otherwise every client header block of the connection
//! is HPACK-decoded and encoded again with the authority replaced by [`REPLACEMENT`]. The new
//! blocks use literal representations only, so h2's decoder table never holds an entry this
//! side would have to track, and are cut into HEADERS and CONTINUATION frames of at most 16 KiB,
//! the smallest SETTINGS_MAX_FRAME_SIZE a server may announce. Other frames pass through as
//! they come, without being buffered whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The authority a repaired request carries instead of an invalid one: what grpc-go hosts send
/// for a unix socket.
pub(crate) const REPLACEMENT: &[u8] = b"localhost";

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames this side writes stay within the default SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2).
const MAX_OUT_FRAME: usize = 16_384;
/// A header block larger than this is not inspected (the server refuses it anyway: hyper's
/// default SETTINGS_MAX_HEADER_LIST_SIZE, which tonic keeps, is 16 KiB).
const MAX_BLOCK: usize = 1 << 20;
/// HPACK table size the client's encoder may use: h2's SETTINGS_HEADER_TABLE_SIZE default.
const TABLE_SIZE: usize = 4096;
/// Bytes asked of the connection per read while inspecting.
const READ_CHUNK: usize = 16_384;

/// How the connection is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the end of the client's first header block.
    Inspect,
    /// The first block's authority was invalid: every block is encoded anew.
    Rewrite,
    /// The first block was fine: bytes pass untouched.
    Through,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, sent on unchanged when the block needs no repair.
    raw: Vec<u8>,
}

/// Server-side wrapper of an accepted connection that repairs the `:authority` of requests
/// h2 would refuse (see the module docs). Writes pass straight through.
pub(crate) struct AuthorityRepair<T> {
    inner: T,
    mode: Mode,
    preface_left: usize,
    /// Payload bytes of the current non-header frame still to pass through.
    copy_left: usize,
    input: BytesMut,
    output: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

impl<T> AuthorityRepair<T> {
    /// Wraps a connection accepted by a server, before any byte was read from it.
    pub(crate) fn new(inner: T) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            inner,
            mode: Mode::Inspect,
            preface_left: PREFACE_LEN,
            copy_left: 0,
            input: BytesMut::new(),
            output: BytesMut::new(),
            block: None,
            decoder,
            eof: false,
        }
    }

    /// Moves what can be handled of `input` to `output`; false when more input is needed.
    fn step(&mut self) -> io::Result<bool> {
        if self.input.is_empty() {
            return Ok(false);
        }
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.input.len());
            self.pass(n);
            self.preface_left -= n;
            return Ok(true);
        }
        if self.copy_left > 0 || self.mode == Mode::Through {
            let n = if self.mode == Mode::Through {
                self.input.len()
            } else {
                self.copy_left.min(self.input.len())
            };
            self.pass(n);
            self.copy_left = self.copy_left.saturating_sub(n);
            return Ok(true);
        }
        if self.input.len() < FRAME_HEADER_LEN {
            return Ok(false);
        }
        let len = usize::from(self.input[0]) << 16
            | usize::from(self.input[1]) << 8
            | usize::from(self.input[2]);
        let kind = self.input[3];
        let in_block = self.block.is_some();
        if !(kind == HEADERS && !in_block || kind == CONTINUATION && in_block) {
            // Any other frame, or one out of order inside a header block (h2 answers that with
            // a connection error): on unchanged.
            self.flush_block_raw();
            self.pass(FRAME_HEADER_LEN);
            self.copy_left = len;
            return Ok(true);
        }
        let collected = self.block.as_ref().map_or(0, |b| b.raw.len());
        if collected + len > MAX_BLOCK {
            return self.oversized_block();
        }
        if self.input.len() < FRAME_HEADER_LEN + len {
            return Ok(false);
        }
        let frame = self.input.split_to(FRAME_HEADER_LEN + len);
        self.collect(&frame)?;
        Ok(true)
    }

    /// Adds a HEADERS or CONTINUATION frame to the block; at END_HEADERS, sends the block on.
    fn collect(&mut self, frame: &[u8]) -> io::Result<()> {
        let flags = frame[4];
        let payload = &frame[FRAME_HEADER_LEN..];
        let block = match self.block.take() {
            Some(mut block) => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(frame);
                block
            }
            None => {
                let Some((priority, fragment)) = headers_fragment(flags, payload) else {
                    // Padding or priority longer than the frame: h2's error to give.
                    self.output.extend_from_slice(frame);
                    self.mode = self.fallback_mode();
                    return Ok(());
                };
                Block {
                    stream: u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]])
                        & 0x7fff_ffff,
                    // END_STREAM and PRIORITY are the HEADERS frame's; CONTINUATION defines
                    // only END_HEADERS (RFC 9113 §6.10), so its other bits must not leak in.
                    flags,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                }
            }
        };
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        self.finish(block)
    }

    /// Decodes a complete block and sends it on, unchanged or encoded anew.
    fn finish(&mut self, block: Block) -> io::Result<()> {
        let mut headers = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            headers.push((name.into_owned(), value.into_owned()));
        });
        match (self.mode, decoded) {
            (Mode::Inspect, Err(_)) => {
                // Not for this side to judge: h2 decodes it and answers.
                self.output.extend_from_slice(&block.raw);
                self.mode = Mode::Through;
            }
            (Mode::Inspect, Ok(())) if !needs_repair(&headers) => {
                self.output.extend_from_slice(&block.raw);
                self.mode = Mode::Through;
            }
            (_, Ok(())) => {
                tracing::debug!(
                    stream = block.stream,
                    "repairing an invalid :authority the client sent (gRPC core's unix socket path)"
                );
                self.mode = Mode::Rewrite;
                let encoded = encode_block(&headers);
                write_frames(&mut self.output, &block, &encoded);
            }
            (_, Err(e)) => {
                // Rewriting, this side's table and h2's must stay in step: with a block it
                // cannot decode they no longer would.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("HPACK header block on stream {}: {e}", block.stream),
                ));
            }
        }
        Ok(())
    }

    fn oversized_block(&mut self) -> io::Result<bool> {
        if self.mode == Mode::Rewrite {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("header block over {MAX_BLOCK} bytes"),
            ));
        }
        self.flush_block_raw();
        self.mode = Mode::Through;
        Ok(true)
    }

    fn fallback_mode(&self) -> Mode {
        match self.mode {
            Mode::Rewrite => Mode::Rewrite,
            _ => Mode::Through,
        }
    }

    /// A block cut short by another frame goes on as it came (only before any rewrite).
    fn flush_block_raw(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
            self.mode = self.fallback_mode();
        }
    }

    fn pass(&mut self, n: usize) {
        let bytes = self.input.split_to(n);
        self.output.extend_from_slice(&bytes);
    }
}

/// The HEADERS payload's priority fields and header block fragment, padding removed.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, tail) = rest.split_first()?;
        pad = usize::from(n);
        rest = tail;
    }
    let priority = if flags & PRIORITY != 0 {
        let (head, tail) = rest.split_first_chunk::<5>()?;
        rest = tail;
        Some(*head)
    } else {
        None
    };
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// Whether h2 would refuse the block's `:authority`.
fn needs_repair(headers: &[(Vec<u8>, Vec<u8>)]) -> bool {
    headers
        .iter()
        .any(|(name, value)| name == b":authority" && !valid_authority(value))
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// The headers as literals without indexing (RFC 7541 §6.2.2), invalid authority replaced.
fn encode_block(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let value: &[u8] = if name == b":authority" && !valid_authority(value) {
            REPLACEMENT
        } else {
            value
        };
        out.push(0x00);
        put_string(&mut out, name);
        put_string(&mut out, value);
    }
    out
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2).
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // Writing to a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// The block as a HEADERS frame and as many CONTINUATION frames as its size needs.
fn write_frames(out: &mut BytesMut, block: &Block, encoded: &[u8]) {
    let priority_len = if block.priority.is_some() { 5 } else { 0 };
    let first_len = encoded.len().min(MAX_OUT_FRAME - priority_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = block.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    put_frame_header(
        out,
        priority_len + first.len(),
        HEADERS,
        flags,
        block.stream,
    );
    if let Some(priority) = block.priority {
        out.put_slice(&priority);
    }
    out.put_slice(first);
    while !rest.is_empty() {
        let n = rest.len().min(MAX_OUT_FRAME);
        let (chunk, tail) = rest.split_at(n);
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), CONTINUATION, flags, block.stream);
        out.put_slice(chunk);
        rest = tail;
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityRepair<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Through && this.input.is_empty() && this.preface_left == 0 {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.step()? {
                continue;
            }
            if this.eof {
                // A frame cut short by the peer's close: what there is goes on, h2 sees the end.
                if let Some(block) = this.block.take() {
                    this.output.extend_from_slice(&block.raw);
                    continue;
                }
                if !this.input.is_empty() {
                    let rest = this.input.split();
                    this.output.extend_from_slice(&rest);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            this.input.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.input) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads from `data` at most `chunk` bytes at a time (at least one).
#[cfg(any(test, feature = "fuzzing"))]
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

#[cfg(any(test, feature = "fuzzing"))]
impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.max(1).min(buf.remaining()).min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// Everything the server would read of a connection on which the client sent `data`.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn read_all_through_repair(data: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(io::Error::other)?;
    rt.block_on(async {
        let mut repair = AuthorityRepair::new(Chunked { data, chunk });
        let mut out = Vec::new();
        repair.read_to_end(&mut out).await?;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_repair(data: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        read_all_through_repair(data, chunk)
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// What gRPC core sends for `unix:/tmp/plugin123/plugin.sock`: the path without its first
    /// slash, percent-encoded.
    const GRPC_CORE_AUTHORITY: &[u8] = b"tmp%2Fplugin123%2Fplugin.sock";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.put_slice(payload);
        out.to_vec()
    }

    fn request(authority: &[u8], path: &str) -> HeaderList {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (
                b"user-agent",
                b"grpc-python/1.85.3 grpc-c/52.0.0 (linux; chttp2)",
            ),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    /// A client session: preface, SETTINGS, then per request a HEADERS block encoded with a
    /// dynamic table (as every client encoder does) and a DATA frame.
    fn session(encoder: &mut loona_hpack::Encoder, requests: &[HeaderList]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for (i, headers) in requests.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
            out.extend(frame(HEADERS, END_HEADERS, stream, &block));
            out.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\x02\x08\x15"));
        }
        out
    }

    /// The header lists and the other frames (type, flags, stream, payload) of what h2 reads.
    type Frames = Vec<(u8, u8, u32, Vec<u8>)>;
    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;
    fn as_server_sees(data: &[u8]) -> (Vec<HeaderList>, Frames) {
        assert_eq!(&data[..PREFACE.len()], PREFACE);
        let mut rest = &data[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut others, mut open) = (Vec::new(), Vec::new(), Vec::new());
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + len];
            assert!(len <= MAX_OUT_FRAME || kind != HEADERS && kind != CONTINUATION);
            match kind {
                HEADERS | CONTINUATION => {
                    let (_, fragment) = if kind == HEADERS {
                        headers_fragment(flags, payload).unwrap()
                    } else {
                        (None, payload)
                    };
                    open.extend_from_slice(fragment);
                    if flags & END_HEADERS != 0 {
                        blocks.push(decoder.decode(&open).unwrap());
                        open.clear();
                    }
                }
                _ => others.push((kind, flags, stream, payload.to_vec())),
            }
            rest = &rest[9 + len..];
        }
        (blocks, others)
    }

    #[test]
    fn grpc_core_unix_authority_is_invalid_for_h2_and_repaired() {
        assert!(!valid_authority(GRPC_CORE_AUTHORITY));
        assert!(valid_authority(b"localhost"));
        assert!(valid_authority(b"127.0.0.1:10000"));
    }

    #[test]
    fn valid_authority_passes_byte_for_byte() {
        let mut enc = loona_hpack::Encoder::new();
        let reqs = [
            request(b"localhost", "/a.B/C"),
            request(b"localhost", "/a.B/D"),
        ];
        let input = session(&mut enc, &reqs);
        for chunk in [1, 7, 4096] {
            assert_eq!(
                through_repair(&input, chunk).unwrap(),
                input,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn invalid_authority_is_replaced_in_every_block_and_the_rest_kept() {
        let mut enc = loona_hpack::Encoder::new();
        // The second and third blocks refer to dynamic-table entries the first one added.
        let reqs = [
            request(GRPC_CORE_AUTHORITY, "/grpc.health.v1.Health/Check"),
            request(GRPC_CORE_AUTHORITY, "/grpctest.Test/Double"),
            request(GRPC_CORE_AUTHORITY, "/grpctest.Test/Double"),
        ];
        let input = session(&mut enc, &reqs);
        let (_, sent_others) = as_server_sees(&input);
        for chunk in [1, 5, 16_384] {
            let out = through_repair(&input, chunk).unwrap();
            let (blocks, others) = as_server_sees(&out);
            assert_eq!(blocks.len(), 3);
            for (block, req) in blocks.iter().zip(&reqs) {
                let mut want = req.clone();
                want[3].1 = REPLACEMENT.to_vec();
                assert_eq!(block, &want, "chunk {chunk}");
            }
            assert_eq!(others, sent_others, "SETTINGS and DATA unchanged");
        }
    }

    #[test]
    fn padded_prioritised_and_continued_blocks_are_rewritten_into_small_frames() {
        let mut enc = loona_hpack::Encoder::new();
        let mut headers = request(GRPC_CORE_AUTHORITY, "/a.B/C");
        headers.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let block = enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let (first, second) = block.split_at(100);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0x80, 0, 0, 0, 15]);
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, second));
        let out = through_repair(&input, 333).unwrap();
        let (blocks, others) = as_server_sees(&out);
        let mut want = headers.clone();
        want[3].1 = REPLACEMENT.to_vec();
        assert_eq!(blocks, vec![want]);
        assert!(others.is_empty());
        let first = &out[PREFACE.len()..];
        assert_eq!(first[3], HEADERS);
        assert_eq!(
            first[4],
            PRIORITY | END_STREAM,
            "padding gone, END_HEADERS later"
        );
        assert_eq!(&first[9..14], &[0x80, 0, 0, 0, 15], "priority kept");
    }

    #[test]
    fn continuation_flags_other_than_end_headers_are_not_carried_over() {
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(
            request(GRPC_CORE_AUTHORITY, "/a.B/C")
                .iter()
                .map(|(n, v)| (&n[..], &v[..])),
        );
        let (first, second) = block.split_at(10);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, first));
        // Undefined bits on CONTINUATION: 0x1 would read as END_STREAM on a HEADERS frame.
        input.extend(frame(
            CONTINUATION,
            END_HEADERS | END_STREAM | PRIORITY,
            1,
            second,
        ));
        let out = through_repair(&input, 4096).unwrap();
        let headers = &out[PREFACE.len()..];
        assert_eq!(headers[3], HEADERS);
        assert_eq!(
            headers[4], END_HEADERS,
            "the stream stays open, no priority fields"
        );
    }

    #[test]
    fn undecodable_first_block_is_left_to_h2() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff]));
        input.extend(frame(0x0, END_STREAM, 1, b"data"));
        assert_eq!(through_repair(&input, 2).unwrap(), input);
    }

    #[test]
    fn undecodable_block_after_a_rewrite_closes_with_an_error() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = session(&mut enc, &[request(GRPC_CORE_AUTHORITY, "/a.B/C")]);
        input.extend(frame(HEADERS, END_HEADERS, 3, &[0xff, 0xff, 0xff]));
        let err = through_repair(&input, 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("stream 3"), "{err}");
    }

    #[test]
    fn truncated_input_ends_without_panic() {
        let mut enc = loona_hpack::Encoder::new();
        let input = session(&mut enc, &[request(GRPC_CORE_AUTHORITY, "/a.B/C")]);
        for cut in 0..input.len() {
            let _ = through_repair(&input[..cut], 3);
        }
    }

    #[test]
    fn a_real_grpcio_session_is_repaired() {
        // Captured from grpcio 1.85.3 dialing `unix:/tmp/cap/plugin123.sock` (Health/Check).
        let input = include_bytes!("../fuzz/corpus/h2_authority/grpcio-unix-session");
        let authority = |block: &HeaderList| {
            block
                .iter()
                .find(|(n, _)| n == b":authority")
                .map(|(_, v)| v.clone())
        };
        let (sent, _) = as_server_sees(input);
        assert_eq!(
            authority(&sent[0]).as_deref(),
            Some(&b"tmp%2Fcap%2Fplugin123.sock"[..])
        );
        let (got, _) = as_server_sees(&through_repair(input, 100).unwrap());
        assert_eq!(authority(&got[0]).as_deref(), Some(REPLACEMENT));
        assert_eq!(got[0].len(), sent[0].len());
    }
}
