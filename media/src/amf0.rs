//! AMF0: the value encoding of RTMP commands and FLV script data, with a decoder that is safe
//! on hostile input.
//!
//! rml_amf0 recurses without a depth limit (a few bytes per nesting level overflow the stack)
//! and trusts declared lengths, so Corriente decodes AMF0 itself: nesting and the number of
//! values are capped, every length is checked against the bytes actually present, and nothing
//! is allocated ahead of the data that fills it. Work and memory are linear in the input, which
//! the chunk decoder has already capped.

use bytes::{BufMut, BytesMut};

/// Deepest nesting of objects and arrays accepted. Real encoders use two or three levels.
pub const MAX_DEPTH: usize = 16;

/// Most values decoded from one payload. Commands carry a dozen, metadata a few dozen (a few
/// thousand with a keyframe index); every value costs 32 bytes or more once decoded, so without
/// a cap one 8 MB message of one-byte nulls would become a quarter of a gigabyte.
pub const MAX_VALUES: usize = 1 << 16;

/// Most elements of a strict array reserved ahead of decoding them.
const PREALLOCATE: usize = 64;

/// One AMF0 value. Objects and ECMA arrays keep their property order.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the Unix epoch, and a time zone offset that encoders set to 0.
    Date(f64, i16),
}

impl Amf0Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Properties of an object or ECMA array.
    pub fn properties(&self) -> Option<&[(String, Amf0Value)]> {
        match self {
            Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => Some(p),
            _ => None,
        }
    }

    /// Looks a property up in an object or ECMA array.
    pub fn property(&self, name: &str) -> Option<&Amf0Value> {
        self.properties()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Shorthand for building an object from `(&str, value)` pairs.
    pub fn object<const N: usize>(props: [(&str, Amf0Value); N]) -> Amf0Value {
        Amf0Value::Object(props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn string(s: impl Into<String>) -> Amf0Value {
        Amf0Value::String(s.into())
    }
}

/// Why an AMF0 payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    #[error("AMF0 data ends in the middle of a value")]
    Truncated,
    #[error("AMF0 values nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("unsupported AMF0 type marker 0x{0:02x}")]
    UnsupportedMarker(u8),
    #[error("AMF0 object end marker outside an object")]
    UnexpectedObjectEnd,
    #[error("more than {MAX_VALUES} AMF0 values in one payload")]
    TooManyValues,
}

mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0a;
    pub const DATE: u8 = 0x0b;
    pub const LONG_STRING: u8 = 0x0c;
    pub const UNSUPPORTED: u8 = 0x0d;
    pub const XML_DOCUMENT: u8 = 0x0f;
    pub const TYPED_OBJECT: u8 = 0x10;
}

/// Decodes every value in `bytes`.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut reader = Reader::new(bytes);
    let mut values = Vec::new();
    while reader.pos < bytes.len() {
        values.push(reader.value(0)?);
    }
    Ok(values)
}

/// Decodes the first value in `bytes` and returns it with the number of bytes it used.
pub fn decode_one(bytes: &[u8]) -> Result<(Amf0Value, usize), Amf0Error> {
    let mut reader = Reader::new(bytes);
    let value = reader.value(0)?;
    Ok((value, reader.pos))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Values decoded so far, against [`MAX_VALUES`].
    values: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            values: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], Amf0Error> {
        let end = self.pos.checked_add(n).ok_or(Amf0Error::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(Amf0Error::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, Amf0Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Amf0Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, Amf0Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn utf8(&mut self, len: usize) -> Result<String, Amf0Error> {
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn short_string(&mut self) -> Result<String, Amf0Error> {
        let len = self.u16()? as usize;
        self.utf8(len)
    }

    fn value(&mut self, depth: usize) -> Result<Amf0Value, Amf0Error> {
        if depth > MAX_DEPTH {
            return Err(Amf0Error::TooDeep);
        }
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(Amf0Error::TooManyValues);
        }
        let m = self.u8()?;
        Ok(match m {
            marker::NUMBER => Amf0Value::Number(self.f64()?),
            marker::BOOLEAN => Amf0Value::Boolean(self.u8()? != 0),
            marker::STRING => Amf0Value::String(self.short_string()?),
            marker::OBJECT => Amf0Value::Object(self.properties(depth)?),
            marker::TYPED_OBJECT => {
                let _class_name = self.short_string()?;
                Amf0Value::Object(self.properties(depth)?)
            }
            marker::NULL => Amf0Value::Null,
            marker::UNDEFINED | marker::UNSUPPORTED => Amf0Value::Undefined,
            marker::ECMA_ARRAY => {
                // The count is a hint that encoders get wrong; the end marker is authoritative.
                let _count = self.u32()?;
                Amf0Value::EcmaArray(self.properties(depth)?)
            }
            marker::STRICT_ARRAY => {
                let count = self.u32()? as usize;
                // Every element takes at least one byte: never trust the count further than that.
                let remaining = self.bytes.len() - self.pos;
                if count > remaining {
                    return Err(Amf0Error::Truncated);
                }
                // Nor reserve room for it: arrays nested in arrays all count the same remaining
                // bytes, so reserving `count` at every level would hold MAX_DEPTH times 32 bytes
                // per input byte before a single element decoded. The vector grows with what
                // actually decodes.
                let mut items = Vec::with_capacity(count.min(PREALLOCATE));
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Amf0Value::StrictArray(items)
            }
            marker::DATE => {
                let ms = self.f64()?;
                let tz = self.u16()? as i16;
                Amf0Value::Date(ms, tz)
            }
            marker::LONG_STRING | marker::XML_DOCUMENT => {
                let len = self.u32()? as usize;
                Amf0Value::String(self.utf8(len)?)
            }
            marker::OBJECT_END => return Err(Amf0Error::UnexpectedObjectEnd),
            other => return Err(Amf0Error::UnsupportedMarker(other)),
        })
    }

    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
        let mut props = Vec::new();
        loop {
            let key = self.short_string()?;
            if key.is_empty() {
                // An empty key followed by the end marker closes the object. Some encoders
                // omit the marker at the very end of a message; accept that too.
                if self.pos == self.bytes.len() {
                    return Ok(props);
                }
                if self.bytes[self.pos] == marker::OBJECT_END {
                    self.pos += 1;
                    return Ok(props);
                }
            }
            let value = self.value(depth + 1)?;
            props.push((key, value));
        }
    }
}

/// Appends the AMF0 encoding of `value` to `out`.
pub fn encode(value: &Amf0Value, out: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(marker::NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(marker::BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) => {
            if s.len() > u16::MAX as usize {
                out.put_u8(marker::LONG_STRING);
                out.put_u32(s.len() as u32);
            } else {
                out.put_u8(marker::STRING);
                out.put_u16(s.len() as u16);
            }
            out.put_slice(s.as_bytes());
        }
        Amf0Value::Object(props) => {
            out.put_u8(marker::OBJECT);
            encode_properties(props, out);
        }
        Amf0Value::Null => out.put_u8(marker::NULL),
        Amf0Value::Undefined => out.put_u8(marker::UNDEFINED),
        Amf0Value::EcmaArray(props) => {
            out.put_u8(marker::ECMA_ARRAY);
            out.put_u32(props.len() as u32);
            encode_properties(props, out);
        }
        Amf0Value::StrictArray(items) => {
            out.put_u8(marker::STRICT_ARRAY);
            out.put_u32(items.len() as u32);
            for item in items {
                encode(item, out);
            }
        }
        Amf0Value::Date(ms, tz) => {
            out.put_u8(marker::DATE);
            out.put_f64(*ms);
            out.put_i16(*tz);
        }
    }
}

fn encode_properties(props: &[(String, Amf0Value)], out: &mut BytesMut) {
    for (key, value) in props {
        let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        out.put_u16(key.len() as u16);
        out.put_slice(key);
        encode(value, out);
    }
    out.put_u16(0);
    out.put_u8(marker::OBJECT_END);
}

/// Encodes a sequence of values.
pub fn encode_all(values: &[Amf0Value], out: &mut BytesMut) {
    for value in values {
        encode(value, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(values: Vec<Amf0Value>) {
        let mut buf = BytesMut::new();
        encode_all(&values, &mut buf);
        assert_eq!(decode_all(&buf).unwrap(), values);
    }

    #[test]
    fn roundtrips_every_type() {
        roundtrip(vec![
            Amf0Value::string("connect"),
            Amf0Value::Number(1.0),
            Amf0Value::object([
                ("app", Amf0Value::string("live")),
                ("fpad", Amf0Value::Boolean(false)),
                ("nested", Amf0Value::object([("x", Amf0Value::Null)])),
            ]),
            Amf0Value::Undefined,
            Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
            Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::Boolean(true)]),
            Amf0Value::Date(1.5e12, 0),
        ]);
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        // 100 000 nested objects: a recursive decoder without a limit overflows the stack.
        let mut bomb = Vec::new();
        for _ in 0..100_000 {
            bomb.extend_from_slice(&[marker::OBJECT, 0x00, 0x01, b'a']);
        }
        assert_eq!(decode_all(&bomb), Err(Amf0Error::TooDeep));
        let mut arrays = Vec::new();
        for _ in 0..100_000 {
            arrays.extend_from_slice(&[marker::STRICT_ARRAY, 0, 0, 0, 1]);
        }
        assert_eq!(decode_all(&arrays), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn refuses_lying_lengths_without_allocating() {
        // A strict array that claims four billion elements.
        assert_eq!(
            decode_all(&[marker::STRICT_ARRAY, 0xff, 0xff, 0xff, 0xff]),
            Err(Amf0Error::Truncated)
        );
        // A long string that claims four gigabytes.
        assert_eq!(
            decode_all(&[marker::LONG_STRING, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(Amf0Error::Truncated)
        );
        assert_eq!(
            decode_all(&[marker::STRING, 0x00]),
            Err(Amf0Error::Truncated)
        );
        assert_eq!(decode_all(&[0x42]), Err(Amf0Error::UnsupportedMarker(0x42)));
        assert_eq!(
            decode_all(&[marker::OBJECT_END]),
            Err(Amf0Error::UnexpectedObjectEnd)
        );
    }

    /// Bytes allocated and not yet freed by the current thread (a test's own decoding).
    mod held {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static HELD: Cell<usize> = const { Cell::new(0) };
            static PEAK: Cell<usize> = const { Cell::new(0) };
        }

        struct Counting;

        #[global_allocator]
        static COUNTING: Counting = Counting;

        fn add(size: usize) {
            let _ = HELD.try_with(|h| {
                h.set(h.get() + size);
                let _ = PEAK.try_with(|p| p.set(p.get().max(h.get())));
            });
        }

        fn sub(size: usize) {
            let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(size)));
        }

        // SAFETY: forwards every call to the system allocator; only counts.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                add(layout.size());
                // SAFETY: forwarded unchanged.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                sub(layout.size());
                // SAFETY: forwarded unchanged.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                sub(layout.size());
                add(new_size);
                // SAFETY: forwarded unchanged.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        /// The most bytes `f` held at once on this thread.
        pub fn peak(f: impl FnOnce()) -> usize {
            let base = HELD.with(Cell::get);
            PEAK.with(|p| p.set(base));
            f();
            PEAK.with(Cell::get) - base
        }
    }

    /// Confirmed with the `amf0` fuzz target's memory check: strict arrays nested 16 deep, each
    /// claiming as many elements as bytes remain, reserved 16 times 32 bytes per input byte
    /// (4 MB for 8 KB; 4 GB for one 8 MB command message) before the first element failed.
    #[test]
    fn nested_array_counts_reserve_nothing_ahead_of_the_data() {
        let total = 64 << 10;
        let mut bomb = Vec::new();
        for _ in 0..MAX_DEPTH {
            bomb.push(marker::STRICT_ARRAY);
            bomb.extend_from_slice(&((total - 5 * MAX_DEPTH) as u32).to_be_bytes());
        }
        // The first element is already bad: nothing here is worth memory.
        bomb.resize(total, 0x42);
        let held =
            held::peak(|| assert_eq!(decode_all(&bomb), Err(Amf0Error::UnsupportedMarker(0x42))));
        assert!(held < total, "{held} bytes held for {total} bytes of input");
    }

    /// One-byte values decode to 32 bytes each: a payload of nulls is capped by value count,
    /// not only by the chunk decoder's message size.
    #[test]
    fn caps_the_number_of_values_in_a_payload() {
        let total = 1 << 20;
        let mut nulls = vec![marker::STRICT_ARRAY];
        nulls.extend_from_slice(&(total as u32 - 5).to_be_bytes());
        nulls.resize(total, marker::NULL);
        let held = held::peak(|| assert_eq!(decode_all(&nulls), Err(Amf0Error::TooManyValues)));
        assert!(
            held < 8 * total,
            "{held} bytes held for {total} bytes of input"
        );
        let mut object = vec![marker::OBJECT];
        for _ in 0..MAX_VALUES {
            object.extend_from_slice(&[0, 0, marker::NULL]);
        }
        assert_eq!(decode_all(&object), Err(Amf0Error::TooManyValues));
        let fine = vec![marker::NULL; MAX_VALUES];
        assert_eq!(decode_all(&fine).map(|v| v.len()), Ok(MAX_VALUES));
    }

    #[test]
    fn accepts_objects_missing_their_final_end_marker() {
        let bytes = [marker::OBJECT, 0x00, 0x01, b'a', marker::NULL, 0x00, 0x00];
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![Amf0Value::object([("a", Amf0Value::Null)])]
        );
    }
}
