//! A safe inflater over the system zlib, for what flate2's backends do not offer: stopping at
//! deflate block boundaries (`Z_BLOCK`), starting mid-stream at a bit offset (`inflatePrime`)
//! with a preset window (`inflateSetDictionary`), and reading the window back
//! (`inflateGetDictionary`). These are the primitives of zlib's `zran` random access.
//!
//! SAFETY (module-wide): the `z_stream` lives in a `Box` that never moves (zlib's state keeps
//! a pointer back to it), is initialised by `inflateInit2_` before any other call and ended
//! exactly once in `Drop`. Every call sets `next_in`/`next_out` from live slices with the
//! matching `avail_*` lengths, and clears them again before returning, so zlib never holds a
//! pointer past the borrow it was given.
//! Dependencies: libz-sys, libc.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::io;

use libz_sys as z;

/// Size of deflate's sliding window: the most history a back-reference can reach.
pub const WINDOW_SIZE: usize = 32 * 1024;

/// What header the stream at the current input position has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrap {
    /// A gzip member: header, deflate data, CRC-32 and size trailer (checked by zlib).
    Gzip,
    /// Raw deflate data, no header or trailer.
    Raw,
}

impl Wrap {
    fn window_bits(self) -> c_int {
        match self {
            // 15 bits of window, +16 for gzip only (never a zlib header).
            Wrap::Gzip => 15 + 16,
            Wrap::Raw => -15,
        }
    }
}

/// Outcome of one [`Inflater::inflate`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes produced.
    pub produced: usize,
    /// The deflate stream (for [`Wrap::Gzip`]: the member, trailer included) has ended.
    pub end: bool,
    /// With `stop_at_blocks`: the inflater stopped just after a block that is not the
    /// stream's last, and this many bits of the last consumed byte belong to the next block.
    pub boundary: Option<u8>,
}

/// A zlib inflate stream.
pub struct Inflater {
    strm: Box<z::z_stream>,
}

// SAFETY: the stream is only ever used through `&mut self`; zlib's state has no thread
// affinity.
unsafe impl Send for Inflater {}

extern "C" fn zalloc(_opaque: *mut c_void, items: c_uint, size: c_uint) -> *mut c_void {
    // SAFETY: calloc accepts any sizes and returns null on failure, which zlib handles.
    unsafe { libc::calloc(items as libc::size_t, size as libc::size_t) }
}

extern "C" fn zfree(_opaque: *mut c_void, address: *mut c_void) {
    // SAFETY: zlib frees only what `zalloc` returned.
    unsafe { libc::free(address) }
}

unsafe extern "C" {
    // In zlib since 1.2.8 but not declared by libz-sys.
    fn inflateGetDictionary(strm: *mut z::z_stream, dict: *mut u8, len: *mut c_uint) -> c_int;
}

fn check(strm: &z::z_stream, code: c_int, op: &str) -> io::Result<()> {
    if code == z::Z_OK {
        return Ok(());
    }
    let msg = if strm.msg.is_null() {
        format!("zlib error {code}")
    } else {
        // SAFETY: zlib's messages are static NUL-terminated strings.
        unsafe { std::ffi::CStr::from_ptr(strm.msg) }
            .to_string_lossy()
            .into_owned()
    };
    let kind = if code == z::Z_DATA_ERROR {
        io::ErrorKind::InvalidData
    } else {
        io::ErrorKind::Other
    };
    Err(io::Error::new(kind, format!("{op}: {msg}")))
}

impl Inflater {
    /// A fresh inflater for a stream that starts with `wrap`.
    pub fn new(wrap: Wrap) -> io::Result<Inflater> {
        let mut strm = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: `strm` is a valid, boxed z_stream with allocators; version and size tell
        // zlib which struct layout we were compiled against.
        let code = unsafe {
            z::inflateInit2_(
                &mut *strm,
                wrap.window_bits(),
                z::zlibVersion() as *const c_char,
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if code != z::Z_OK {
            // Nothing was allocated; Drop must not call inflateEnd on it.
            let e = check(&strm, code, "inflateInit2");
            std::mem::forget(strm);
            return Err(e
                .err()
                .unwrap_or_else(|| io::Error::other("inflateInit2 failed")));
        }
        Ok(Inflater { strm })
    }

    /// Starts over on a new stream that starts with `wrap`, keeping the allocations.
    pub fn reset(&mut self, wrap: Wrap) -> io::Result<()> {
        // SAFETY: the stream was initialised (module header).
        let code = unsafe { z::inflateReset2(&mut *self.strm, wrap.window_bits()) };
        check(&self.strm, code, "inflateReset2")
    }

    /// Feeds the low `bits` (1..=7) bits of `value` before the next input byte: the part of
    /// a byte that belongs to the block where a raw stream resumes.
    pub fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        // SAFETY: the stream was initialised; zlib checks `bits` itself.
        let code =
            unsafe { z::inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
        check(&self.strm, code, "inflatePrime")
    }

    /// Presets the window of a raw stream (the output that preceded the resume point).
    pub fn set_dictionary(&mut self, dict: &[u8]) -> io::Result<()> {
        let len = c_uint::try_from(dict.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "dictionary too long"))?;
        // SAFETY: `dict` is live for the call and zlib copies it into its own window.
        let code = unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), len) };
        check(&self.strm, code, "inflateSetDictionary")
    }

    /// The current window: up to [`WINDOW_SIZE`] bytes of the most recent output.
    pub fn window(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; WINDOW_SIZE];
        let mut len: c_uint = 0;
        // SAFETY: `buf` has room for a whole window, the most zlib ever writes.
        let code = unsafe { inflateGetDictionary(&mut *self.strm, buf.as_mut_ptr(), &mut len) };
        check(&self.strm, code, "inflateGetDictionary")?;
        buf.truncate(len as usize);
        Ok(buf)
    }

    /// Inflates from `input` into `output`. With `stop_at_blocks`, returns at the end of each
    /// deflate block (zlib's `Z_BLOCK`), so the caller can record a resume point there.
    /// Returns no progress (0, 0) when it needs more input or output space.
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        stop_at_blocks: bool,
    ) -> io::Result<Step> {
        let avail_in = input.len().min(c_uint::MAX as usize);
        let avail_out = output.len().min(c_uint::MAX as usize);
        let s = &mut *self.strm;
        s.next_in = input.as_ptr().cast_mut();
        s.avail_in = avail_in as c_uint;
        s.next_out = output.as_mut_ptr();
        s.avail_out = avail_out as c_uint;
        let flush = if stop_at_blocks {
            z::Z_BLOCK
        } else {
            z::Z_NO_FLUSH
        };
        // SAFETY: next_in/next_out point into live slices of at least avail_in/avail_out
        // bytes; zlib never writes through next_in.
        let code = unsafe { z::inflate(s, flush) };
        let consumed = avail_in - s.avail_in as usize;
        let produced = avail_out - s.avail_out as usize;
        s.next_in = std::ptr::null_mut();
        s.avail_in = 0;
        s.next_out = std::ptr::null_mut();
        s.avail_out = 0;
        let end = match code {
            z::Z_STREAM_END => true,
            // Z_BUF_ERROR: no progress was possible; not an error for a streaming caller.
            z::Z_OK | z::Z_BUF_ERROR => false,
            z::Z_NEED_DICT => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "inflate: stream needs a preset dictionary",
                ));
            }
            c => {
                check(s, c, "inflate")?;
                false
            }
        };
        let dt = s.data_type;
        // Bit 128: just after an end-of-block code (or a header); bit 64: in the last block.
        let boundary =
            (stop_at_blocks && !end && dt & 128 != 0 && dt & 64 == 0).then_some((dt & 7) as u8);
        Ok(Step {
            consumed,
            produced,
            end,
            boundary,
        })
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` and ended only here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_a_gzip_member_and_reports_its_end() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let gz = gzip(&data);
        let mut inf = Inflater::new(Wrap::Gzip).unwrap();
        let mut out = vec![0u8; data.len() + 10];
        let (mut i, mut o, mut boundaries) = (0, 0, 0);
        loop {
            let s = inf.inflate(&gz[i..], &mut out[o..], true).unwrap();
            i += s.consumed;
            o += s.produced;
            boundaries += usize::from(s.boundary.is_some());
            if s.end {
                break;
            }
            assert!(s.consumed + s.produced > 0 || s.boundary.is_some(), "stuck");
        }
        assert_eq!((i, &out[..o]), (gz.len(), &data[..]));
        assert!(boundaries >= 1);
        assert!(inf.window().unwrap().len() <= WINDOW_SIZE);
    }

    #[test]
    fn damaged_stream_is_invalid_data() {
        let mut gz = gzip(&[7u8; 5000]);
        let n = gz.len();
        gz[n - 6] ^= 0xff; // the stored size or CRC no longer match
        let mut inf = Inflater::new(Wrap::Gzip).unwrap();
        let mut out = vec![0u8; 10_000];
        let e = inf.inflate(&gz, &mut out, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
