import { describe, expect, it } from "@effect/vitest"
import { commandOf, rowCountOf } from "../../../src/internal/connector/statement.js"

/** What the tag parser replaced: the command is the leading letters, the row count the last of two numbers. */
const byRegExp = (tag: string): readonly [string, number | null] => {
  const match = /^([A-Za-z]+)(?: (\d+))?(?: (\d+))?/.exec(tag)
  const count = match?.[3] ?? match?.[2]
  return [match?.[1] ?? "", count === undefined ? null : parseInt(count, 10)]
}

const parse = (tag: string): readonly [string, number | null] => {
  const command = commandOf(tag)
  return [command, rowCountOf(tag, command.length)]
}

describe("CommandComplete tags", () => {
  it("reads the command and the row count of every tag PostgreSQL sends", () => {
    expect(parse("SELECT 1")).toEqual(["SELECT", 1])
    expect(parse("INSERT 0 5")).toEqual(["INSERT", 5])
    expect(parse("UPDATE 12345678901")).toEqual(["UPDATE", 12345678901])
    expect(parse("DELETE 0")).toEqual(["DELETE", 0])
    expect(parse("MERGE 3")).toEqual(["MERGE", 3])
    expect(parse("COPY 7")).toEqual(["COPY", 7])
    expect(parse("BEGIN")).toEqual(["BEGIN", null])
    expect(parse("CREATE TABLE")).toEqual(["CREATE", null])
    expect(parse("DISCARD ALL")).toEqual(["DISCARD", null])
    expect(parse("")).toEqual(["", null])
  })

  it("agrees with the regular expression it replaced, odd tags included", () => {
    const tags = [
      "SELECT 1",
      "INSERT 0 1",
      "FETCH 10",
      "MOVE 2",
      "SELECT 1 2 3",
      "SELECT 1x",
      "SELECT  1",
      "SELECT ",
      "SELECT",
      "1 2",
      " SELECT 1",
      "select 4",
      "ALTER TABLE 5",
      "INSERT 0",
      "INSERT 0 ",
      "X 9 9 9",
      "Ä 1",
      "SELECT 007"
    ]
    for (const tag of tags) expect(parse(tag), tag).toEqual(byRegExp(tag))
  })
})
