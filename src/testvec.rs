//! Golden-vector helpers shared by the on-disk format tests (`src/format/tests.rs`) and the wire protocol
//! tests (`src/net/wire/tests.rs`): an encoding is built from annotated pieces, rendered as an annotated
//! hexdump under `proto/vectors/` with the BLAKE3 it must have, and checked both ways. `QPACK_BLESS=1 cargo
//! test golden` rewrites the files: only with a format version bump (on disk) or a new ALPN (wire).

/// An encoding as a list of (comment, bytes) pieces.
pub(crate) struct Vector {
    pieces: Vec<(String, Vec<u8>)>,
}

impl Vector {
    pub(crate) fn new() -> Self {
        Self { pieces: Vec::new() }
    }

    /// A piece of raw bytes.
    pub(crate) fn raw(mut self, comment: &str, bytes: &[u8]) -> Self {
        self.pieces.push((comment.to_string(), bytes.to_vec()));
        self
    }

    /// A piece that is the postcard encoding of `v`.
    pub(crate) fn pc<T: serde::Serialize>(self, comment: &str, v: &T) -> Self {
        let bytes = postcard::to_allocvec(v).unwrap();
        self.raw(comment, &bytes)
    }

    /// The envelope header of `proto/FORMAT.md`: magic and format version 1.
    pub(crate) fn header(self, magic: [u8; 4], what: &str) -> Self {
        self.raw(&format!("magic {:?} ({what})", String::from_utf8_lossy(&magic)), &magic).raw("format version 1", &[1])
    }

    /// Puts the frame length prefix of `proto/PROTOCOL.md` (u32 little-endian, the length of all the pieces so
    /// far) in front of the pieces.
    pub(crate) fn framed(mut self) -> Self {
        let len = self.bytes().len() as u32;
        self.pieces.insert(0, (format!("frame length: {len} (u32 little-endian)"), len.to_le_bytes().to_vec()));
        self
    }

    /// All the pieces' bytes, in order.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.pieces.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }

    /// The annotated hexdump.
    pub(crate) fn render(&self, title: &str) -> String {
        let bytes = self.bytes();
        let mut out =
            format!("# {title}\n# length: {} bytes\n# blake3: {}\n", bytes.len(), blake3::hash(&bytes).to_hex());
        for (comment, b) in &self.pieces {
            let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
            // Long fields wrap at 32 bytes a line; the comment goes on the first.
            for (i, line) in hex.chunks(32).enumerate() {
                let text = line.join(" ");
                if i == 0 {
                    out.push_str(&format!("{text:<48} # {comment}\n"));
                } else {
                    out.push_str(&format!("{text}\n"));
                }
            }
            if b.is_empty() {
                out.push_str(&format!("{:<48} # {comment} (no bytes)\n", ""));
            }
        }
        out
    }
}

/// Parses an annotated hexdump: hex pairs before any `#`; the `# blake3:` line gives the expected hash.
pub(crate) fn parse(text: &str) -> (Vec<u8>, String) {
    let mut bytes = Vec::new();
    let mut hash = String::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# blake3: ") {
            hash = h.trim().to_string();
        }
        let data = line.split('#').next().unwrap_or("");
        for tok in data.split_whitespace() {
            bytes.push(u8::from_str_radix(tok, 16).expect("hex byte"));
        }
    }
    (bytes, hash)
}

/// Checks the vector file `proto/vectors/{name}` against `v` (what our encoder produces: `encoded`) and returns
/// the file's bytes.
pub(crate) fn check(name: &str, title: &str, v: &Vector, encoded: &[u8]) -> Vec<u8> {
    assert_eq!(v.bytes(), encoded, "{name}: the annotated pieces do not add up to the encoding");
    let path = format!("{}/proto/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("QPACK_BLESS").is_some() {
        std::fs::write(&path, v.render(title)).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (bytes, hash) = parse(&text);
    assert_eq!(
        bytes, encoded,
        "{name}: the encoding changed; that needs a format version bump (on disk) or a new ALPN (wire)"
    );
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hash, "{name}: blake3 line does not match the bytes");
    bytes
}
