//! A minimal `.npz` writer: each array is an `.npy` (format 1.0: magic,
//! header dict, raw little-endian data) stored deflated in a zip archive,
//! which is what `numpy.load` reads.

use std::io::Write;

use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

/// An element type numpy knows, written little-endian.
pub trait Elem: Copy {
    const DESCR: &'static str;
    fn put(self, out: &mut Vec<u8>);
}

macro_rules! elem {
    ($t:ty, $d:expr) => {
        impl Elem for $t {
            const DESCR: &'static str = $d;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
elem!(f32, "<f4");
elem!(f64, "<f8");
elem!(i8, "|i1");
elem!(u8, "|u1");
elem!(i64, "<i8");

/// The bytes of one `.npy` file.
pub fn npy<T: Elem>(data: &[T], shape: &[usize]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "npy: shape {shape:?} for {} values",
        data.len()
    );
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}",
        T::DESCR
    );
    // Magic (6) + version (2) + length (2) + header, padded to 64 with '\n' last.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in data {
        v.put(&mut out);
    }
    out
}

struct Entry {
    name: String,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
}

/// Builds an `.npz` in memory; [`Npz::finish`] returns its bytes.
pub struct Npz {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    level: Compression,
}

impl Npz {
    pub fn new(level: u32) -> Self {
        Npz {
            buf: Vec::new(),
            entries: Vec::new(),
            level: Compression::new(level),
        }
    }

    pub fn add<T: Elem>(&mut self, name: &str, data: &[T], shape: &[usize]) {
        self.add_file(&format!("{name}.npy"), &npy(data, shape));
    }

    pub fn add_1d<T: Elem>(&mut self, name: &str, data: &[T]) {
        self.add(name, data, &[data.len()]);
    }

    fn add_file(&mut self, name: &str, bytes: &[u8]) {
        assert!(
            !self.entries.iter().any(|e| e.name == name),
            "npz: {name} twice"
        );
        let mut crc = Crc::new();
        crc.update(bytes);
        let mut enc = DeflateEncoder::new(Vec::new(), self.level);
        enc.write_all(bytes).expect("deflate");
        let deflated = enc.finish().expect("deflate");
        let offset = self.buf.len() as u64;
        assert!(
            offset + deflated.len() as u64 + 1024 < u32::MAX as u64,
            "npz: over 4 GiB (no zip64 here)"
        );
        let e = Entry {
            name: name.to_string(),
            crc: crc.sum(),
            compressed: deflated.len() as u64,
            size: bytes.len() as u64,
            offset,
        };
        // Local file header.
        let b = &mut self.buf;
        b.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        b.extend_from_slice(&20u16.to_le_bytes()); // version needed
        b.extend_from_slice(&0u16.to_le_bytes()); // flags
        b.extend_from_slice(&8u16.to_le_bytes()); // deflate
        b.extend_from_slice(&0u16.to_le_bytes()); // time
        b.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
        b.extend_from_slice(&e.crc.to_le_bytes());
        b.extend_from_slice(&(e.compressed as u32).to_le_bytes());
        b.extend_from_slice(&(e.size as u32).to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // extra
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&deflated);
        self.entries.push(e);
    }

    pub fn finish(mut self) -> Vec<u8> {
        let cd_start = self.buf.len() as u64;
        let b = &mut self.buf;
        for e in &self.entries {
            b.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            b.extend_from_slice(&20u16.to_le_bytes()); // version made by
            b.extend_from_slice(&20u16.to_le_bytes()); // version needed
            b.extend_from_slice(&0u16.to_le_bytes()); // flags
            b.extend_from_slice(&8u16.to_le_bytes()); // deflate
            b.extend_from_slice(&0u16.to_le_bytes()); // time
            b.extend_from_slice(&0x21u16.to_le_bytes()); // date
            b.extend_from_slice(&e.crc.to_le_bytes());
            b.extend_from_slice(&(e.compressed as u32).to_le_bytes());
            b.extend_from_slice(&(e.size as u32).to_le_bytes());
            b.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes()); // extra
            b.extend_from_slice(&0u16.to_le_bytes()); // comment
            b.extend_from_slice(&0u16.to_le_bytes()); // disk
            b.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
            b.extend_from_slice(&0u32.to_le_bytes()); // external attrs
            b.extend_from_slice(&(e.offset as u32).to_le_bytes());
            b.extend_from_slice(e.name.as_bytes());
        }
        let cd_size = b.len() as u64 - cd_start;
        let n = self.entries.len();
        assert!(n < 0xffff, "npz: too many arrays");
        b.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(n as u16).to_le_bytes());
        b.extend_from_slice(&(n as u16).to_le_bytes());
        b.extend_from_slice(&(cd_size as u32).to_le_bytes());
        b.extend_from_slice(&(cd_start as u32).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.buf
    }
}

/// Values of many cases concatenated, with `off[i]..off[i+1]` case i's.
pub struct Ragged<T> {
    pub data: Vec<T>,
    pub off: Vec<i64>,
}

impl<T: Elem> Default for Ragged<T> {
    fn default() -> Self {
        Ragged {
            data: Vec::new(),
            off: vec![0],
        }
    }
}

impl<T: Elem> Ragged<T> {
    pub fn push(&mut self, v: &[T]) {
        self.data.extend_from_slice(v);
        self.off.push(self.data.len() as i64);
    }

    pub fn write(&self, npz: &mut Npz, name: &str) {
        npz.add_1d(name, &self.data);
        npz.add_1d(&format!("{name}_off"), &self.off);
    }
}

/// Case names, one per line, as a uint8 array.
pub fn names(npz: &mut Npz, name: &str, names: &[String]) {
    npz.add_1d(name, names.join("\n").as_bytes());
}
