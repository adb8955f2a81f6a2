/**
 * Adapter Workbench in JupyterLab (and Notebook 7): a launcher card, palette commands and the Adapter Hub sidebar.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, showDialog, Dialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import { workbenchIcon } from './icon';
import { HubSidebar } from './sidebar';

const CATEGORY = 'Adapter Workbench';
const WORKBENCH_CODE = 'from workbench.ui import Workbench\n\nWorkbench()';
/** Tutorial notebooks are named like `01_quickstart.ipynb`; looked for at the root and in `notebooks/`. */
const TUTORIAL_NAME = /^\d\d_.+\.ipynb$/;
const TUTORIAL_FOLDERS = ['', 'notebooks'];

namespace CommandIDs {
  export const create = 'adapter-workbench:new';
  export const tutorials = 'adapter-workbench:open-tutorials';
  export const hub = 'adapter-workbench:open-hub';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-adapter-workbench:plugin',
  description: 'A launcher card, commands and an Adapter Hub sidebar for the Adapter Workbench.',
  autoStart: true,
  optional: [ILauncher, ICommandPalette, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null
  ) => {
    const { commands } = app;

    commands.addCommand(CommandIDs.create, {
      label: args => (args['isLauncher'] ? 'Adapter Workbench' : 'New Adapter Workbench'),
      caption: 'A new notebook that starts the Adapter Workbench',
      icon: workbenchIcon,
      execute: args => newWorkbench(app, (args['cwd'] as string) || '')
    });
    commands.addCommand(CommandIDs.tutorials, {
      label: 'Open tutorial notebooks',
      caption: 'Open the Adapter Workbench tutorial notebooks',
      execute: () => openTutorials(app)
    });

    const sidebar = new HubSidebar(code => insertIntoActiveCell(app, notebooks, code));
    app.shell.add(sidebar, 'left', { rank: 950 });
    commands.addCommand(CommandIDs.hub, {
      label: 'Show the Adapter Hub sidebar',
      execute: () => app.shell.activateById(sidebar.id)
    });

    if (launcher) {
      launcher.add({ command: CommandIDs.create, category: CATEGORY, rank: 1, args: { isLauncher: true } });
    }
    if (palette) {
      for (const command of [CommandIDs.create, CommandIDs.tutorials, CommandIDs.hub]) {
        palette.addItem({ command, category: CATEGORY });
      }
    }
  }
};

/** A new notebook in `cwd` whose first cell starts `Workbench()`, run at once and saved. */
async function newWorkbench(app: JupyterFrontEnd, cwd: string): Promise<NotebookPanel> {
  await app.serviceManager.kernelspecs.ready;
  const kernelName = app.serviceManager.kernelspecs.specs?.default;
  const panel: NotebookPanel = await app.commands.execute('notebook:create-new', { cwd, kernelName });
  await panel.context.ready;
  const cell = panel.content.model?.cells.get(0);
  cell?.sharedModel.setSource(WORKBENCH_CODE);
  await panel.sessionContext.ready;
  panel.content.activeCellIndex = 0;
  await NotebookActions.run(panel.content, panel.sessionContext);
  await panel.context.save();
  return panel;
}

/**
 * Open the tutorials with no kernel (`shouldStart: false`): five kernels at once would take about 2 GB. Running a cell
 * then starts the notebook's preferred kernel for that notebook alone, without asking (`autoStartDefault`).
 */
const NO_KERNEL = { shouldStart: false, autoStartDefault: true };

/** Open every tutorial notebook found, the first one in front; say where they are expected when there are none. */
async function openTutorials(app: JupyterFrontEnd): Promise<void> {
  const found: string[] = [];
  for (const folder of TUTORIAL_FOLDERS) {
    let listing: Contents.IModel;
    try {
      listing = await app.serviceManager.contents.get(folder, { content: true });
    } catch {
      continue; // the folder is not there
    }
    for (const item of (listing.content as Contents.IModel[]) ?? []) {
      if (item.type === 'notebook' && TUTORIAL_NAME.test(item.name)) {
        found.push(item.path);
      }
    }
    if (found.length) {
      break;
    }
  }
  if (!found.length) {
    await showDialog({
      title: 'No tutorial notebooks here',
      body: 'The tutorials (01_quickstart.ipynb, ...) are in the notebooks/ folder of the Adapter Workbench ' +
        'repository; `make lab` opens JupyterLab there.',
      buttons: [Dialog.okButton()]
    });
    return;
  }
  found.sort();
  for (const path of [...found, found[0]]) {
    // The first one again at the end: it becomes the active tab.
    await app.commands.execute('docmanager:open', { path, factory: 'Notebook', kernelPreference: NO_KERNEL });
  }
}

/** Append `code` to the active cell of the current notebook; false when no notebook is open. */
function insertIntoActiveCell(app: JupyterFrontEnd, notebooks: INotebookTracker | null, code: string): boolean {
  const cell = notebooks?.activeCell;
  const panel = notebooks?.currentWidget;
  if (!cell || !panel) {
    return false;
  }
  const source = cell.model.sharedModel.getSource();
  cell.model.sharedModel.setSource(source.trim() ? `${source.replace(/\s+$/, '')}\n${code}` : code);
  app.shell.activateById(panel.id);
  return true;
}

export default plugin;
