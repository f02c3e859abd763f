// The last position (epoch, offset) the application has seen in each room, and the
// verdict on each incoming room push: deliver it, or drop it as a duplicate. Pure: no
// I/O. It must never let a message whose offset is not greater than the last one
// delivered in the same epoch through (replays after a recovery overlap live
// messages), and never hold more than one entry per room.

/** Verdicts of `Positions.accept`. */
export const DELIVER = 'deliver'; // the next message, in order
export const DUPLICATE = 'duplicate'; // offset not greater than the last seen: drop
export const FIRST = 'first'; // no position was known for the room
export const GAP = 'gap'; // same epoch, but offsets were skipped: messages were lost
export const NEW_EPOCH = 'new-epoch'; // the room's history was reset on the server

export class Positions {
  #rooms = new Map();

  /** `{epoch, offset}` or undefined. */
  get(room) {
    const p = this.#rooms.get(room);
    return p === undefined ? undefined : { epoch: p.epoch, offset: p.offset };
  }

  has(room) {
    return this.#rooms.has(room);
  }

  set(room, epoch, offset) {
    this.#rooms.set(room, { epoch, offset });
  }

  delete(room) {
    this.#rooms.delete(room);
  }

  rooms() {
    return [...this.#rooms.keys()];
  }

  /**
   * Judges a room push and, unless it is a duplicate, records it as the room's
   * position. Everything but DUPLICATE is delivered; GAP and NEW_EPOCH also tell the
   * application that continuity was lost.
   */
  accept(room, epoch, offset) {
    const known = this.#rooms.get(room);
    if (known === undefined) {
      this.#rooms.set(room, { epoch, offset });
      return FIRST;
    }
    if (known.epoch !== epoch) {
      this.#rooms.set(room, { epoch, offset });
      return NEW_EPOCH;
    }
    if (offset <= known.offset) return DUPLICATE;
    const verdict = offset === known.offset + 1 ? DELIVER : GAP;
    known.offset = offset;
    return verdict;
  }

  /**
   * Applies a `joined` reply. With `recovered: true` the position is kept (the missed
   * messages follow, from our offset on); otherwise the room restarts at the server's
   * current offset. Returns whether the application kept continuity: true when the
   * server recovered, or when the server's position is exactly ours (nothing missed).
   */
  joined(room, epoch, offset, recovered) {
    const known = this.#rooms.get(room);
    if (recovered === true && known !== undefined) {
      // A recovery replays from our offset; the server's epoch is authoritative.
      known.epoch = epoch;
      return true;
    }
    const same = known !== undefined && known.epoch === epoch && known.offset === offset;
    this.#rooms.set(room, { epoch, offset });
    return same;
  }
}
