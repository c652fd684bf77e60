/** node-postgres' value serialiser (`pg/lib/utils.js`), used by its own `Query` and by pg-cursor. */
declare module "pg/lib/utils.js" {
  const utils: { readonly prepareValue: (value: unknown) => unknown }
  export default utils
}
