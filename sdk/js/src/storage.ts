// Where a device keeps its keys between sessions. The package never stores anything by
// itself: the app chooses a KeyStorage and calls exportBytes()/fromBytes() explicitly.

/** Byte values by name. Implementations must not log or serialise the values. */
export interface KeyStorage {
  /** The bytes stored under `name`, or undefined. */
  get(name: string): Promise<Uint8Array | undefined>;
  /** Stores a copy of `value` under `name`, replacing what was there. */
  set(name: string, value: Uint8Array): Promise<void>;
  /** Removes `name` (no error if absent). */
  delete(name: string): Promise<void>;
}

/** Keeps keys in memory only (tests, Node, or a session that must leave no trace). */
export class MemoryKeyStorage implements KeyStorage {
  readonly #values = new Map<string, Uint8Array>();

  async get(name: string): Promise<Uint8Array | undefined> {
    const v = this.#values.get(name);
    return v === undefined ? undefined : v.slice();
  }

  async set(name: string, value: Uint8Array): Promise<void> {
    this.#values.get(name)?.fill(0);
    this.#values.set(name, value.slice());
  }

  async delete(name: string): Promise<void> {
    // Overwrite before forgetting: the bytes are keys.
    this.#values.get(name)?.fill(0);
    this.#values.delete(name);
  }

  toJSON(): string {
    return "MemoryKeyStorage";
  }
}

/**
 * Keeps keys in the browser's IndexedDB (one object store, values as Uint8Array), for the
 * origin of the page. IndexedDB is readable by any script of the origin: combine it with a
 * strict Content-Security-Policy.
 */
export class IndexedDbKeyStorage implements KeyStorage {
  readonly #dbName: string;
  readonly #store = "keys";
  #db: Promise<IDBDatabase> | undefined;

  /** @param dbName the IndexedDB database name (default `ghostkey`). */
  constructor(dbName = "ghostkey") {
    this.#dbName = dbName;
  }

  #open(): Promise<IDBDatabase> {
    if (this.#db === undefined) {
      const store = this.#store;
      this.#db = new Promise((resolve, reject) => {
        if (typeof indexedDB === "undefined") {
          reject(new Error("IndexedDB is not available here; use MemoryKeyStorage"));
          return;
        }
        const req = indexedDB.open(this.#dbName, 1);
        req.onupgradeneeded = () => {
          req.result.createObjectStore(store);
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error ?? new Error("cannot open IndexedDB"));
      });
    }
    return this.#db;
  }

  async #run<T>(mode: IDBTransactionMode, op: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.#open();
    return new Promise<T>((resolve, reject) => {
      const tx = db.transaction(this.#store, mode);
      const req = op(tx.objectStore(this.#store));
      // Resolve when the transaction commits, so a set() is durable once awaited.
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
      tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
    });
  }

  async get(name: string): Promise<Uint8Array | undefined> {
    const v: unknown = await this.#run("readonly", (s) => s.get(name));
    return v instanceof Uint8Array ? v : undefined;
  }

  async set(name: string, value: Uint8Array): Promise<void> {
    await this.#run("readwrite", (s) => s.put(value.slice(), name));
  }

  async delete(name: string): Promise<void> {
    await this.#run("readwrite", (s) => s.delete(name));
  }

  toJSON(): string {
    return `IndexedDbKeyStorage(${this.#dbName})`;
  }
}
