// A Server-Sent Events parser (the WHATWG event-stream format) for streams read with fetch,
// which, unlike EventSource, can send an Authorization header and report HTTP statuses.

/** One dispatched event: its `event` name, `data` and `id` (null when it had no id line). */
export interface ServerSentEvent {
  event: string;
  data: string;
  id: string | null;
}

/** Feed decoded text with `push`; it returns the events completed by that text. Lines may
 * end with `\n`, `\r\n` or `\r`, and a chunk may end anywhere, even between `\r` and `\n`. */
export class EventParser {
  private buffer = "";
  private event = "";
  private data: string[] = [];
  private id: string | null = null;
  private sawCR = false;

  push(text: string): ServerSentEvent[] {
    const out: ServerSentEvent[] = [];
    if (this.sawCR && text.startsWith("\n")) text = text.slice(1);
    this.sawCR = false;
    this.buffer += text;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (match === null) break;
      if (match[0] === "\r" && match.index === this.buffer.length - 1) {
        // A lone CR at the end: the LF of a CRLF may still be on its way.
        this.sawCR = true;
      }
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event !== null) out.push(event);
    }
    return out;
  }

  private line(line: string): ServerSentEvent | null {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        return null;
      }
      const event = { event: this.event || "message", data: this.data.join("\n"), id: this.id };
      this.event = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return null; // a comment
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    return null;
  }
}
