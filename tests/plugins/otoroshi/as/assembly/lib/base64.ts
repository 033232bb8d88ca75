// Standard base64 (RFC 4648, with padding), as Otoroshi's `body_base64` uses.

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

export function encode(data: Uint8Array): string {
  const out = new Array<string>();
  let i = 0;
  for (; i + 3 <= data.length; i += 3) {
    const n = (<u32>data[i] << 16) | (<u32>data[i + 1] << 8) | <u32>data[i + 2];
    out.push(ALPHABET.charAt((n >> 18) & 63));
    out.push(ALPHABET.charAt((n >> 12) & 63));
    out.push(ALPHABET.charAt((n >> 6) & 63));
    out.push(ALPHABET.charAt(n & 63));
  }
  const rest = data.length - i;
  if (rest == 1) {
    const n = <u32>data[i] << 16;
    out.push(ALPHABET.charAt((n >> 18) & 63));
    out.push(ALPHABET.charAt((n >> 12) & 63));
    out.push("==");
  } else if (rest == 2) {
    const n = (<u32>data[i] << 16) | (<u32>data[i + 1] << 8);
    out.push(ALPHABET.charAt((n >> 18) & 63));
    out.push(ALPHABET.charAt((n >> 12) & 63));
    out.push(ALPHABET.charAt((n >> 6) & 63));
    out.push("=");
  }
  return out.join("");
}

function digit(c: i32): i32 {
  if (c >= 0x41 && c <= 0x5a) return c - 0x41;
  if (c >= 0x61 && c <= 0x7a) return c - 0x61 + 26;
  if (c >= 0x30 && c <= 0x39) return c - 0x30 + 52;
  if (c == 0x2b || c == 0x2d) return 62; // '+' (and URL-safe '-')
  if (c == 0x2f || c == 0x5f) return 63; // '/' (and URL-safe '_')
  return -1;
}

// Decodes, ignoring padding and whitespace; null on any other character.
export function decode(s: string): Uint8Array | null {
  const bytes = new Array<u8>();
  let acc: u32 = 0;
  let bits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x3d || c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09) continue;
    const d = digit(c);
    if (d < 0) return null;
    acc = (acc << 6) | <u32>d;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push(<u8>((acc >> bits) & 0xff));
    }
  }
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = bytes[i];
  return out;
}
