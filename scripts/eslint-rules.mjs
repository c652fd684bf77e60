// The project's own ESLint rules, loaded by eslint.config.mjs as the plugin "local".
//
// local/no-floating-effect: an expression statement whose value is an Effect that is neither yielded nor run,
// e.g. `Effect.log("x")` written without `yield*` inside a generator, which builds the effect and drops it.
// It is the check of @effect/language-service's `floatingEffect` diagnostic (editor-only, so not run by CI),
// with the same exceptions: assignments, fibers (`Effect.runFork(...)` as a statement starts the fiber), and
// Effect subtypes that are plain data (Option, Either, Exit, a Context tag: anything with `_tag` or `get`).
// An Effect is recognised structurally, like the language service does it: a required property with a computed
// name whose type is a variance struct `{ _A, _E, _R }` of one-signature functions, so any effect copy matches.
// `void expression` states that dropping the value is intended.
import ts from "typescript"

const assignments = new Set(["=", "??=", "||=", "&&="])

const isVarianceStruct = (checker, type) =>
  ["_A", "_E", "_R"].every((name) => {
    const symbol = checker.getPropertyOfType(type, name)
    return symbol !== undefined && checker.getTypeOfSymbol(symbol).getCallSignatures().length === 1
  })

const isEffect = (checker, type) =>
  checker.getPropertiesOfType(type).some((symbol) => {
    const declaration = symbol.valueDeclaration
    return (symbol.flags & ts.SymbolFlags.Property) !== 0 && (symbol.flags & ts.SymbolFlags.Optional) === 0 &&
      declaration !== undefined && ts.isPropertySignature(declaration) && ts.isComputedPropertyName(declaration.name) &&
      isVarianceStruct(checker, checker.getTypeOfSymbol(symbol))
  })

const has = (checker, type, name) => checker.getPropertyOfType(type, name) !== undefined

const isFiber = (checker, type) => has(checker, type, "await") && has(checker, type, "poll")

const isDataSubtype = (checker, type) => has(checker, type, "_tag") || has(checker, type, "get")

/** The constituents of `type` that are Effects to be run: a union is floating if any member is. */
const floatingEffects = (checker, type) =>
  (type.isUnion() ? type.types : [type]).filter((member) =>
    isEffect(checker, member) && !isFiber(checker, member) && !isDataSubtype(checker, member)
  )

const noFloatingEffect = {
  meta: {
    type: "problem",
    docs: { description: "Require Effects in expression statements to be yielded, run or assigned" },
    messages: {
      floating: "{{type}} is built and dropped: yield* it, run it, or assign it (or mark it `void` if intended)."
    },
    schema: []
  },
  create(context) {
    const services = context.sourceCode.parserServices
    if (services?.program == null) {
      throw new Error("local/no-floating-effect needs type information (parserOptions.projectService)")
    }
    const checker = services.program.getTypeChecker()
    return {
      ExpressionStatement(node) {
        if (node.directive !== undefined) return
        const expression = node.expression
        if (expression.type === "AssignmentExpression" && assignments.has(expression.operator)) return
        const type = services.getTypeAtLocation(expression)
        const effects = floatingEffects(checker, type)
        if (effects.length === 0) return
        context.report({ node, messageId: "floating", data: { type: checker.typeToString(effects[0]) } })
      }
    }
  }
}

export default {
  meta: { name: "local" },
  rules: { "no-floating-effect": noFloatingEffect }
}
