// Signs in to a running `portcullis demo` with headless Chromium, the way a person
// would (open the URL, fill in the provider's login form, submit), and saves a PNG of
// the sample app's identity page.
//
//   node shoot.mjs URL OUT.png [USER]      (USER: alice, the default, or bob)
//
// CHROMIUM: the browser binary (default /usr/bin/chromium).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, out, user = "alice"] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node shoot.mjs URL OUT.png [USER]");
  process.exit(2);
}
const base = url.replace(/\/+$/, "");
const profile = mkdtempSync(join(tmpdir(), "portcullis-shot-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    chromiumSandbox: false,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1200, height: 800 },
    deviceScaleFactor: 1,
    colorScheme: "light",
    locale: "en-US",
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20000);

  // The app sends the browser to the proxy's login, which sends it to the provider's form.
  await page.goto(`${base}/`);
  await page.waitForSelector('form[action="/authorize/login"]');
  await page.fill("#username", user);
  await page.fill("#password", user);
  await Promise.all([
    page.waitForURL(`${base}/`),
    page.click('button[type="submit"]:not([name="cancel"])'),
  ]);
  await page.waitForSelector("text=Who the proxy says you are");
  const email = `${user}@example.com`;
  if (!(await page.content()).includes(email)) {
    throw new Error(`the identity page does not show ${email}`);
  }
  await page.screenshot({ path: out, fullPage: false });
  console.log(`saved ${out}: ${await page.title()}`);
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
