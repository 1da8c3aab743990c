// The whole story in a real browser: a patient and a doctor enrol (SMS and TOTP), the
// patient sends the doctor an encrypted prescription, the patient loses every device,
// recovers on a "new device" with the platform's login and Ghostkey's code, and reads the
// prescription again.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startAll, openDevice } from './harness.mjs';
import * as flow from './flows.mjs';

const PRESCRIPTION = 'Rx: amoxicillin 500 mg, 3 times a day for 7 days. Dr. Martin.';
const PATIENT_PHONE = '+33 6 12 34 56 78';
const PATIENT_E164 = '+33612345678';

let env;
before(async () => {
  env = await startAll();
});
after(async () => {
  await env?.close();
});

/** Logs in to the backend from Node, as the app provider's own tools would. */
async function backendAs(name) {
  const res = await fetch(`${env.backend.url}/api/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const { token } = await res.json();
  const get = async (path) =>
    (await fetch(`${env.backend.url}${path}`, { headers: { authorization: `Bearer ${token}` } })).json();
  return { get };
}

test('patient and doctor enrol, share a prescription, the patient loses every device and recovers', async () => {
  const patient = await openDevice(env.browser, env.backend.url);
  const doctor = await openDevice(env.browser, env.backend.url);
  try {
    // Enrolment: the patient by SMS, the doctor with an authenticator app (QR code).
    await flow.login(patient.page, 'patient');
    await flow.enrolSms(patient.page, PATIENT_PHONE, PATIENT_E164);
    await flow.login(doctor.page, 'doctor');
    await flow.enrolTotp(doctor.page);

    // The patient sends the prescription; both can read it, the backend cannot.
    await flow.sendDocument(patient.page, 'doctor', PRESCRIPTION);
    const docs = await flow.readDocuments(doctor.page);
    assert.ok(docs.some((d) => d.includes(`From patient`) && d.includes(PRESCRIPTION)), docs.join('\n'));
    const stored = (await (await backendAs('doctor')).get('/api/documents')).documents;
    assert.equal(stored.length, 1);
    assert.ok(!Buffer.from(stored[0].envelope, 'base64url').toString('latin1').includes('amoxicillin'));

    // Every device lost: the page forgets its keys and its login.
    await flow.loseEveryDevice(patient.page);
    const left = await patient.page.evaluate(async () => ({
      local: localStorage.length,
      session: sessionStorage.length,
      databases: (await indexedDB.databases()).map((d) => d.name),
    }));
    assert.deepEqual(left, { local: 0, session: 0, databases: [] });

    // The new device: the platform's login again, then Ghostkey's own code.
    await flow.login(patient.page, 'patient');
    assert.match(await patient.page.locator('#device-state').textContent(), /no keys/);
    const before = await flow.startRecovery(patient.page, PATIENT_E164);
    assert.match(await patient.page.locator('#recover-masked').textContent(), /^\+33 6\*+78$/);
    const code = await flow.devCode(patient.page, PATIENT_E164, before);
    await flow.typeRecoveryCode(patient.page, code);
    await flow.waitVisible(patient.page, '#send');

    // The new device reads the prescription it had sent, and the doctor still can.
    const again = await flow.readDocuments(patient.page);
    assert.ok(again.some((d) => d.includes('To doctor') && d.includes(PRESCRIPTION)), again.join('\n'));
    assert.ok((await flow.readDocuments(doctor.page)).some((d) => d.includes(PRESCRIPTION)));

    // No secret in the browsers' consoles: neither user secret nor any code.
    const secrets = [
      (await (await backendAs('patient')).get('/api/secret')).userSecret,
      (await (await backendAs('doctor')).get('/api/secret')).userSecret,
      code,
    ];
    for (const line of [...patient.console, ...doctor.console, env.backend.log()]) {
      for (const s of secrets) assert.ok(!line.includes(s), `a secret in the output: ${line}`);
    }
  } finally {
    await patient.context.close();
    await doctor.context.close();
  }
});
