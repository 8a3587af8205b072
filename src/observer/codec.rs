//! Little-endian byte encoding for observers: a writer, and a reader whose
//! every read is length-checked, so malformed bytes are an error, never a
//! panic or an unbounded allocation.

use crate::DynQuantError;

/// Appends little-endian fields.
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn i32(&mut self, v: i32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u128(&mut self, v: u128) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.bytes(&v.to_le_bytes());
    }
    /// LEB128: 7 bits a byte, low first (bucket counts are mostly small).
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.u8(v as u8);
    }
}

/// Reads what [`Writer`] wrote; `what` names the format in errors.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    /// The error for malformed input.
    pub(crate) fn bad(&self, why: impl core::fmt::Display) -> DynQuantError {
        DynQuantError::InvalidArgument(format!(
            "malformed {} bytes (at byte {} of {}): {why}",
            self.what,
            self.pos,
            self.buf.len()
        ))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DynQuantError> {
        if n > self.remaining() {
            return Err(self.bad(format!("{n} more bytes needed, {} left", self.remaining())));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DynQuantError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DynQuantError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DynQuantError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DynQuantError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn i32(&mut self) -> Result<i32, DynQuantError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DynQuantError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn u128(&mut self) -> Result<u128, DynQuantError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    pub(crate) fn f64(&mut self) -> Result<f64, DynQuantError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DynQuantError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = (b & 0x7f) as u64;
            if shift == 63 && bits > 1 {
                return Err(self.bad("varint overflows u64"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("varint longer than 10 bytes"))
    }

    /// A length of items of `item_bytes` each that the rest can hold.
    pub(crate) fn length(&mut self, n: u64, item_bytes: usize) -> Result<usize, DynQuantError> {
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(item_bytes) <= self.remaining() => Ok(n),
            _ => Err(self.bad(format!(
                "length {n} exceeds the {} bytes left",
                self.remaining()
            ))),
        }
    }

    /// Checks that everything was read.
    pub(crate) fn finish(self) -> Result<(), DynQuantError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.bad(format!("{} trailing bytes", self.remaining())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::default();
        w.u8(7);
        w.u32(0xdead_beef);
        w.f64(-1.5);
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            w.varint(v);
        }
        let bytes = w.0;
        let mut r = Reader::new(&bytes, "test");
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 0xdead_beef);
        assert_eq!(r.f64().unwrap(), -1.5);
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(r.varint().unwrap(), v);
        }
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut], "test");
            let ok = (|| -> Result<(), DynQuantError> {
                r.u8()?;
                r.u32()?;
                r.f64()?;
                for _ in 0..6 {
                    r.varint()?;
                }
                Ok(())
            })();
            assert!(ok.is_err());
        }
        let mut r = Reader::new(&[0xff; 11], "test");
        assert!(r.varint().is_err());
        let mut r = Reader::new(
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            "t",
        );
        assert!(r.varint().is_err());
        let mut r = Reader::new(&[1, 2, 3], "test");
        assert!(r.length(u64::MAX, 4).is_err());
        assert_eq!(r.length(3, 1).unwrap(), 3);
    }
}
