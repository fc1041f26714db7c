// Loads the cleanup page in Debian's headless Chromium, ticks the confirmation, clicks
// "restore my connection" and checks the result page. Screenshots go to the artifacts dir.
// Usage: node selfrelease.mjs URL ARTIFACT_DIR
import { chromium } from "playwright-core";

const [url, artifacts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ locale: "en-GB" });
  const response = await page.goto(url);
  const heading = await page.textContent("h1");
  const family = await page.textContent("dl dd");
  await page.screenshot({ path: `${artifacts}/cleanup-page.png`, fullPage: true });
  await page.check("input[name=confirm]");
  await page.click("#release-button");
  await page.waitForSelector("#released", { timeout: 10000 });
  const released = await page.textContent("#released");
  await page.screenshot({ path: `${artifacts}/cleanup-page-released.png`, fullPage: true });
  console.log(JSON.stringify({ status: response.status(), heading, family, released }));
} finally {
  await browser.close();
}
