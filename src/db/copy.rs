//! Rows for a binary `COPY ... FROM STDIN WITH (FORMAT binary)`, built in memory and sent with
//! `PgConnection::copy_in_raw`. PostgreSQL stores a `COPY`'s rows with batched heap inserts (one
//! WAL record per page, not per row) and decodes no parameter arrays, which makes it about half
//! as costly per row as `INSERT ... SELECT FROM unnest(...)` for the intake's events.
//!
//! The format (PostgreSQL docs, "COPY", binary format): a header, then per row the field count
//! (int16) and each field as its length (int32, -1 for null) and its binary send form, then the
//! trailer (int16 -1).

use bytes::{BufMut, Bytes, BytesMut};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Writes the binary `COPY` header: signature, flags, header extension length.
pub fn put_header(buf: &mut BytesMut) {
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0);
    buf.put_i32(0);
}

/// Writes the binary `COPY` trailer (after the last row).
pub fn put_trailer(buf: &mut BytesMut) {
    buf.put_i16(-1);
}

/// A binary `COPY`'s data. Call [`CopyRows::row`] with the field count, then one field method per
/// column in the statement's column order.
#[derive(Debug)]
pub struct CopyRows {
    buf: BytesMut,
}

impl CopyRows {
    /// Empty data (the header only), with room for about `capacity` bytes of rows.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 32);
        put_header(&mut buf);
        CopyRows { buf }
    }

    /// Starts a row of `fields` fields.
    pub fn row(&mut self, fields: i16) {
        self.buf.put_i16(fields);
    }

    fn field(&mut self, bytes: &[u8]) {
        self.buf.put_i32(bytes.len() as i32);
        self.buf.put_slice(bytes);
    }

    fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    /// `text` (the binary form of text is its UTF-8 bytes).
    pub fn text(&mut self, value: Option<&str>) {
        match value {
            Some(v) => self.field(v.as_bytes()),
            None => self.null(),
        }
    }

    pub fn int2(&mut self, value: i16) {
        self.buf.put_i32(2);
        self.buf.put_i16(value);
    }

    pub fn int4(&mut self, value: i32) {
        self.buf.put_i32(4);
        self.buf.put_i32(value);
    }

    pub fn int8(&mut self, value: i64) {
        self.buf.put_i32(8);
        self.buf.put_i64(value);
    }

    pub fn bool(&mut self, value: bool) {
        self.buf.put_i32(1);
        self.buf.put_u8(value as u8);
    }

    /// `timestamptz`: microseconds since 2000-01-01 UTC.
    pub fn timestamptz(&mut self, value: Option<chrono::DateTime<chrono::Utc>>) {
        match value {
            Some(at) => self.int8(at.timestamp_micros() - POSTGRES_EPOCH_MICROS),
            None => self.null(),
        }
    }

    /// `jsonb`: format version 1, then the JSON text.
    pub fn jsonb(&mut self, value: Option<&serde_json::Value>) {
        let Some(value) = value else {
            return self.null();
        };
        let length_at = self.buf.len();
        self.buf.put_i32(0);
        self.buf.put_u8(1);
        // Writing into a BytesMut cannot fail, and a Value always serializes.
        let _ = serde_json::to_writer((&mut self.buf).writer(), value);
        let length = (self.buf.len() - length_at - 4) as i32;
        self.buf[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// The data with its trailer, ready to send.
    pub fn finish(mut self) -> Bytes {
        put_trailer(&mut self.buf);
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_in_network_order() {
        let mut rows = CopyRows::with_capacity(0);
        rows.row(3);
        rows.text(Some("ab"));
        rows.text(None);
        rows.jsonb(Some(&serde_json::json!({"a": 1})));
        let data = rows.finish();
        let body = &data[19..];
        assert_eq!(&data[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(
            body,
            [
                &[0, 3][..],
                &[0, 0, 0, 2, b'a', b'b'],
                &[0xff, 0xff, 0xff, 0xff],
                &[0, 0, 0, 8, 1],
                br#"{"a":1}"#,
                &[0xff, 0xff],
            ]
            .concat()
        );
    }

    #[test]
    fn timestamps_count_from_the_postgres_epoch() {
        let mut rows = CopyRows::with_capacity(0);
        let at = chrono::DateTime::from_timestamp(946_684_801, 0).unwrap();
        rows.timestamptz(Some(at));
        let data = rows.finish();
        assert_eq!(
            &data[19..31],
            &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40]
        );
    }
}
