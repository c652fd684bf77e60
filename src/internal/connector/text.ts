/**
 * What is read of a statement's text (nothing is parsed): its first keyword, and whether more than one
 * statement follows. Shared by the connector (which sends several statements as a simple Query) and the pool
 * (which never pipelines behind a statement that may leave a transaction open).
 *
 * @internal
 */

/** White space and comments before a statement's first keyword. */
const LEADING = String.raw`^(?:\s+|--[^\n]*(?:\n|$)|\/\*[^]*?\*\/)*`

/** A COPY statement, by its first keyword. */
const copyStatement = new RegExp(`${LEADING}copy\\b`, "i")

/** BEGIN or START TRANSACTION, by its first keyword (no other statement starts with these words). */
const beginStatement = new RegExp(`${LEADING}(?:begin|start)\\b`, "i")

/**
 * Texts that go out as a simple Query even without parameters: more than one statement (a ';' before the
 * end: the extended protocol takes one statement per Parse; a ';' in a literal or a comment is taken for one
 * too, which only costs the proof of `neverRan` and pipelining), and COPY (COPY FROM STDIN answered with
 * CopyFail over the extended protocol would wait for a Sync that was sent before it).
 *
 * @internal
 */
export const needsSimpleQuery = (text: string): boolean => {
  const semicolon = text.indexOf(";")
  if (semicolon !== -1) {
    for (let i = semicolon + 1; i < text.length; i++) {
      const c = text.charCodeAt(i)
      // anything but white space after the first ';'
      if (c !== 32 && (c < 9 || c > 13)) return true
    }
  }
  return copyStatement.test(text)
}

/**
 * Whether the connection may be left in a transaction after `text`: a BEGIN or START TRANSACTION, or a text
 * sent as a simple Query (any of its statements may be one). One statement over the extended protocol opens
 * none otherwise: its Sync ends its implicit transaction.
 *
 * @internal
 */
export const mayOpenTransaction = (text: string): boolean => beginStatement.test(text) || needsSimpleQuery(text)
